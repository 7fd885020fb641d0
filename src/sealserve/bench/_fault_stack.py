"""The fault benchmark's stack: everything a fault can hit, each a real process.

On top of :class:`~sealserve.bench._runtime_stack.LocalStack` (the simulated TEE's platform
daemon in this process, an owner, users, a model store):

* the KeyService as **replicas** sharing one database (PostgreSQL when a URL is given, else a
  SQLite file, which ``BEGIN IMMEDIATE`` lets several processes share), each launched and
  measured by the daemon, behind a :class:`~sealserve.bench._balancer.TcpBalancer` (the URL the
  clients and the runtimes use);
* the **gateway** as its own process (``sealserve gateway serve``: the local platform, whose
  instance hosts are its children and die with it), behind a balancer too, so that a gateway
  killed and started again keeps its clients' URL;
* optionally the model store on a small **tmpfs** of its own (root only), so that the store's
  disk can be filled without touching this machine's disks.

It also reads what the processes of the stack hold (:meth:`census`): every process whose
command line names the stack's directory, its open descriptors, and the shared-memory segments
in ``/dev/shm`` nobody maps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sealserve._lifeline import tie_to_this_process
from sealserve._log import get_logger
from sealserve._stopping import children, descendants, kill_named, wait_gone
from sealserve.bench._balancer import TcpBalancer
from sealserve.bench._runtime_stack import LocalStack
from sealserve.config import KeyServiceSettings
from sealserve.errors import SealserveError

__all__ = ["Census", "FaultStack"]

_log = get_logger(__name__)
_GATEWAY_READY_S: Final = 90.0
_SHM: Final = Path("/dev/shm")  # noqa: S108 - the POSIX shared-memory directory
_SHM_PREFIX: Final = f"{_SHM}/"


@dataclasses.dataclass(frozen=True)
class Census:
    """What the stack's processes hold at one moment."""

    processes: dict[int, str]
    fds: dict[str, int]
    shm: frozenset[str]


class FaultStack(LocalStack):
    """See the module docstring.  ``env`` is the gateway's environment (its settings)."""

    def __init__(
        self,
        root: Path,
        *,
        db_url: str = "",
        replicas: int = 2,
        gateway_env: Mapping[str, str] | None = None,
        store_tmpfs_mb: int | None = None,
        log_level: str = "WARNING",
    ) -> None:
        super().__init__(
            root,
            keyservice_settings=KeyServiceSettings(port=0, db_url=db_url),
            log_level=log_level,
        )
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas!r}")
        self.replicas = replicas
        self.gateway_env = dict(gateway_env or {})
        self.store_tmpfs_mb = store_tmpfs_mb
        self.keyservices: list[Any] = []
        self.ks_balancer = TcpBalancer(name="keyservice-balancer")
        self.gw_balancer = TcpBalancer(name="gateway-balancer")
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_url = ""
        self.gateways_started = 0
        self._mounted = False
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> FaultStack:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.store_tmpfs_mb is not None:
            self._mount_store()
        self.ks_balancer.start()
        self.gw_balancer.start()
        super().open()
        return self

    def _mount_store(self) -> None:
        store = self.root / "store"
        store.mkdir(exist_ok=True)
        mount = shutil.which("mount") or "/bin/mount"
        result = subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={self.store_tmpfs_mb}m,mode=0755", "tmpfs",
             str(store)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise SealserveError(f"cannot mount a tmpfs for the store: {result.stderr.strip()}")
        self._mounted = True

    def _start_keyservice(self) -> None:
        for _ in range(self.replicas):
            self.keyservices.append(self._launch_replica())
        self.ks_balancer.set_backends([ks.url for ks in self.keyservices if ks is not None])
        self.keyservice_url = self.ks_balancer.url

    def _launch_replica(self) -> Any:
        from sealserve.keyservice import launch_keyservice

        data = self.root / "keyservice"
        data.mkdir(exist_ok=True)
        log = os.open(self.root / "keyservice.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            return launch_keyservice(
                self._platform(),
                self.keyservice_settings,
                data_dir=data,
                platform_key=self.platform_key_file,
                log_level=self.log_level,
                stderr=log,
            )
        finally:
            os.close(log)

    def close(self) -> None:
        self.stop_gateway()
        for ks in self.keyservices:
            if ks is not None:
                with contextlib.suppress(Exception):
                    ks.stop(timeout=20)
        self.keyservices.clear()
        super().close()
        self.ks_balancer.close()
        self.gw_balancer.close()
        if self._mounted:
            umount = shutil.which("umount") or "/bin/umount"
            subprocess.run([umount, "-l", str(self.root / "store")], check=False)
            self._mounted = False

    # -- KeyService replicas -------------------------------------------------------------------

    def kill_keyservice(self, index: int) -> int:
        """SIGKILL replica ``index`` (the balancer stops reaching it); its pid."""
        ks = self.keyservices[index]
        if ks is None:
            raise SealserveError(f"KeyService replica {index} is not running")
        pid = int(ks.process.pid)
        os.kill(pid, signal.SIGKILL)
        wait_gone([pid], timeout_s=10)
        with contextlib.suppress(Exception):
            ks.stop(timeout=1)
        self.keyservices[index] = None
        self.ks_balancer.set_backends([k.url for k in self.keyservices if k is not None])
        return pid

    def restart_keyservice(self, index: int) -> None:
        self.keyservices[index] = self._launch_replica()
        self.ks_balancer.set_backends([k.url for k in self.keyservices if k is not None])

    # -- the gateway ---------------------------------------------------------------------------

    def start_gateway(self) -> str:
        """Start ``sealserve gateway serve`` (again); the balancer's URL, which clients use."""
        run = self.root / "gateway"
        run.mkdir(exist_ok=True)
        self.gateways_started += 1
        log_path = self.root / f"gateway-{self.gateways_started}.log"
        command = [
            sys.executable, "-m", "sealserve", "gateway", "serve",
            "--store", str(self.store.root),
            "--tee-socket", str(self.socket_path),
            "--keyservice", self.keyservice_url,
            "--keyservice-measurement", self.keyservice_measurement,
            "--platform-key", str(self.platform_key_file),
            "--data-dir", str(run),
            "--port", "0",
            "--log-level", "INFO",
        ]  # fmt: skip
        env = dict(os.environ, **self.gateway_env)
        lifeline = tie_to_this_process(env)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                pass_fds=(lifeline,),
                start_new_session=True,
            )
        assert popen.stdout is not None
        url = ""
        deadline = time.monotonic() + _GATEWAY_READY_S
        while time.monotonic() < deadline:
            line = popen.stdout.readline()
            if not line:
                break
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("event") == "gateway.ready":
                    url = str(doc["url"])
                    break
        if not url:
            popen.kill()
            popen.wait(10)
            raise SealserveError(
                f"the gateway did not start: {log_path.read_text(errors='replace')[-1500:]}"
            )
        popen.stdout.close()
        self.gateway = popen
        self.gateway_url = url
        self.gw_balancer.set_backends([url])
        return self.gw_balancer.url

    def kill_gateway(self) -> int:
        """SIGKILL the gateway (its instance hosts follow it by their lifelines); its pid."""
        if self.gateway is None:
            raise SealserveError("the gateway is not running")
        pid = self.gateway.pid
        self.gw_balancer.set_backends([])
        os.kill(pid, signal.SIGKILL)
        self.gateway.wait(10)
        self.gateway = None
        return pid

    def stop_gateway(self, *, timeout_s: float = 60.0) -> None:
        if self.gateway is None:
            return
        gateway, self.gateway = self.gateway, None
        self.gw_balancer.set_backends([])
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout_s)
            except subprocess.TimeoutExpired:
                kill_named({gateway.pid: "gateway"}, reason="not stopped after SIGTERM")
                gateway.wait(10)

    def platform_doc(self) -> dict[str, Any]:
        from sealserve.client import GatewayClient

        with GatewayClient(self.gw_balancer.url, timeout_s=10) as client:
            return client.platform(recent=0)

    def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait until the gateway runs no instance (scaled to zero); whether it did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(SealserveError, OSError):
                if not self.platform_doc()["instances"]:
                    return True
            time.sleep(0.5)
        return False

    # -- what the stack holds ------------------------------------------------------------------

    def census(self) -> Census:
        marks = (str(self.root), str(self.socket_path.parent))
        processes: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            cmd = " ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p)
            if any(mark in cmd for mark in marks):
                processes[int(entry.name)] = cmd[:200]
        if self.gateway is not None:
            # The gateway's host template and the instance hosts forked from it: their command
            # line (``sealserve instance zygote``) does not name the stack's directory.
            for pid in descendants([self.gateway.pid]):
                if pid not in processes and (cmd := _cmdline(pid)):
                    processes[pid] = cmd[:200]
        pids = {"bench": os.getpid()}
        listen: dict[str, int | None] = {}
        if self.gateway is not None:
            pids["gateway"] = self.gateway.pid
            listen["gateway"] = _port_of(self.gateway_url)
        for i, ks in enumerate(self.keyservices):
            if ks is not None:
                pids[f"keyservice-{i}"] = int(ks.process.pid)
                listen[f"keyservice-{i}"] = _port_of(str(ks.url))
        db_port = _port_of(self.keyservice_settings.db_url)
        fds: dict[str, int] = {}
        for role, pid in pids.items():
            # Not held on to: the KeyService's connections to its database (a pool, bounded by
            # its size, refilled after a restart) and the connections clients keep open to a
            # server (keep-alive: the clients' to close, bounded by them).
            pooled = _sockets(pid, remote_port=db_port) if db_port else 0
            port = listen.get(role)
            inbound = _sockets(pid, local_port=port) - 1 if port else 0  # less the listener
            fds[role] = _fd_count(pid) - pooled - max(0, inbound)
        return Census(processes=processes, fds=fds, shm=frozenset(_unmapped_shm()))


def _port_of(url: str) -> int | None:
    """The TCP port of a URL (``None`` for SQLite or none)."""
    if not url or url.startswith("sqlite"):
        return None
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).port or (5432 if url.startswith("postgres") else None)
    except ValueError:
        return None


def _sockets(pid: int, *, remote_port: int | None = None, local_port: int | None = None) -> int:
    """How many of ``pid``'s descriptors are TCP sockets with that remote or local port."""
    ports: dict[str, tuple[int, int]] = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9:
                    local = int(parts[1].rsplit(":", 1)[1], 16)
                    ports[parts[9]] = (local, int(parts[2].rsplit(":", 1)[1], 16))
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if not target.startswith("socket:["):
                    continue
                local, remote = ports.get(target[8:-1], (-1, -1))
                by_remote = remote_port is not None and remote == remote_port
                if by_remote or (local_port is not None and local == local_port):
                    count += 1
    return count


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _unmapped_shm() -> set[str]:
    """sealserve's segments in /dev/shm that no process maps (a leak: nothing can free it)."""
    try:
        names = {p.name for p in _SHM.iterdir() if p.name.startswith("sealserve")}
    except OSError:
        return set()
    if not names:
        return set()
    mapped: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (entry / "maps").read_text(errors="replace").splitlines():
                if _SHM_PREFIX in line:
                    mapped.add(line.rsplit(_SHM_PREFIX, 1)[1].split()[0])
    return names - mapped


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p)


def zygotes(gateway_pid: int) -> list[int]:
    """The gateway's host templates (its direct children that fork the instance hosts)."""
    return sorted(p for p in children(gateway_pid) if "instance zygote" in _cmdline(p))
