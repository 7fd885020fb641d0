"""The local backend: each instance is a host + runtime process pair on this machine.

An instance is ``sealserve instance serve`` started as a subprocess (the untrusted host),
which launches its sealed runtime through the simulated TEE's platform daemon (``--tee-socket``)
and serves the binary ``/v1/infer`` endpoint on a free port of 127.0.0.1.  The backend hands
the host a broker socket (:mod:`sealserve.instance._broker`), on which the host says it is
ready and sends each runtime generation's data link: requests, loads and evictions then go
straight to the runtime over shared memory (:class:`~._link.RuntimeLink`), on the event loop,
with no HTTP and no thread.  Without a live link (a runtime restarting, ``data_link=False``)
the backend talks to the host with :class:`~sealserve.instance.InstanceClient` on a pool of
threads (the client is blocking, and keeps one connection per thread).  It checks
``/healthz``, and stops the host with SIGTERM (the host closes its runtime; the daemon ends a
runtime whose host went away), then SIGKILL if it does not stop in time.

An instance's size is what it is billed and what its runtime's model budget is set from
(``--memory-budget-mb``: the size less the reserve for the host and the runtime).  No sandbox
holds the processes to the size here; each health check measures what the pair uses
(:mod:`._memory`), which :meth:`LocalBackend.describe` reports as ``resident_mb``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import logging
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from sealserve._forkserver import ForkClient, ForkedProcess
from sealserve._lifeline import LIFELINE_ENV, tie_to_this_process
from sealserve._log import get_logger
from sealserve._tls import TlsFiles, client_context
from sealserve.errors import PlatformError, SealserveError
from sealserve.instance import (
    SPAWNED_AT_ENV,
    BrokerMessage,
    InstanceClient,
    receive_broker_message,
)
from sealserve.platform._backend import InferOutcome, InstanceHealth, InstanceInfo
from sealserve.platform._link import RuntimeLink
from sealserve.platform._memory import pair_resident_mb, process_memory

__all__ = ["LocalBackend", "LocalOptions"]

_log = get_logger(__name__)
_T = TypeVar("_T")
_POLL_S: Final = 0.02
_HEALTH_TIMEOUT_S: Final = 3.0
#: What a stop may take beyond ``stop_timeout_s``: SIGKILL and the wait for it.
_KILL_S: Final = 12.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalOptions:
    """How the local backend starts instances.

    ``tee_socket`` is the TEE's platform daemon that launches runtimes;
    ``platform_key_file`` and ``keyservice_measurement`` are the runtime's pin of the KeyService
    (its measured launch config: what owners grant), or ``launch_config_file`` the whole pin
    (a JSON object: hardware backends, whose pin carries reference values and roots).  Ready
    files and each instance's log go to ``run_dir``.
    """

    #: The model store the instances fetch from: a directory or an fsspec URL.
    store_dir: Path | str
    keyservice_url: str
    tee_socket: Path
    platform_key_file: Path
    keyservice_measurement: str
    run_dir: Path
    launch_config_file: Path | None = None
    memory_factor: float = 4.0
    threads: int = 2
    max_body_mb: int = 64
    log_level: str = "WARNING"
    host: str = "127.0.0.1"
    python: str = dataclasses.field(default_factory=lambda: sys.executable)
    stop_timeout_s: float = 20.0
    io_threads: int = 64
    #: Send requests straight to each runtime over its data link (else HTTP to the host).
    data_link: bool = True
    #: Fork hosts from a template that has imported them once (else start a process each).
    zygote: bool = True
    #: Instance hosts serve HTTPS with these files; ``ca_bundle`` is what the platform checks
    #: them (and the hosts check an https:// KeyService) against.
    tls: TlsFiles | None = None
    ca_bundle: Path | None = None

    def __post_init__(self) -> None:
        if not self.keyservice_url.startswith(("http://", "https://")):
            raise ValueError(f"keyservice_url must be an http(s) URL, got {self.keyservice_url!r}")
        if not self.memory_factor >= 1.0 or math.isinf(self.memory_factor):
            raise ValueError(
                f"memory_factor must be a finite number >= 1, got {self.memory_factor!r}"
            )
        for name in ("threads", "max_body_mb", "io_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(
                f"log_level has value {self.log_level!r}; use DEBUG, INFO, WARNING or ERROR"
            )
        if not self.stop_timeout_s > 0:
            raise ValueError(f"stop_timeout_s must be > 0, got {self.stop_timeout_s!r}")


@dataclasses.dataclass
class _LocalInstance:
    popen: subprocess.Popen[bytes] | ForkedProcess
    log_path: Path
    ready_file: Path
    memory_mb: int
    budget_mb: float
    info: InstanceInfo | None = None
    client: InstanceClient | None = None
    #: The runtime's process (the host starts a new one after a crash).
    runtime_pid: int | None = None
    #: What the host and the runtime used at the last health check (MB).
    resident_mb: float | None = None
    #: Our end of the broker socket, and what the host announced on it.
    broker: socket.socket | None = None
    ready: asyncio.Future[dict[str, Any]] | None = None
    #: The live data link to the current runtime generation, if any.
    link: RuntimeLink | None = None
    sandbox_start_ms: float | None = None


class LocalBackend:
    """Instances as ``sealserve instance serve`` subprocesses (see the module docstring)."""

    def __init__(self, options: LocalOptions) -> None:
        if not isinstance(options, LocalOptions):
            raise TypeError(f"options must be LocalOptions, got {type(options).__name__}")
        self.options = options
        self._executor = concurrent.futures.ThreadPoolExecutor(
            options.io_threads, thread_name_prefix="platform-io"
        )
        self._instances: dict[int, _LocalInstance] = {}
        self._link_tasks: set[asyncio.Task[None]] = set()
        self._ssl = client_context(options.ca_bundle) if options.tls is not None else None
        self._closed = False
        self._zygote: ForkClient | None = None
        self._zygote_popen: subprocess.Popen[bytes] | None = None
        self._zygote_lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _instance(self, instance_id: int) -> _LocalInstance:
        inst = self._instances.get(instance_id)
        if inst is None:
            raise PlatformError(f"instance {instance_id} is not running on this backend")
        return inst

    def _client(self, instance_id: int) -> InstanceClient:
        client = self._instance(instance_id).client
        if client is None:
            error = PlatformError(f"instance {instance_id} is still starting")
            error.retryable = True
            raise error
        return client

    def instance_command(
        self, *, budget_mb: float, concurrency: int, ready_file: Path
    ) -> list[str]:
        """The command line of one instance host."""
        o = self.options
        return [
            o.python, "-m", "sealserve", "instance", "serve",
            "--store", str(o.store_dir),
            "--keyservice", o.keyservice_url,
            "--host", o.host,
            "--port", "0",
            "--tee-socket", str(o.tee_socket),
            "--data-dir", str(o.run_dir),
            *(
                ["--launch-config", str(o.launch_config_file)]
                if o.launch_config_file is not None
                else [
                    "--platform-key", str(o.platform_key_file),
                    "--keyservice-measurement", o.keyservice_measurement,
                ]
            ),
            "--memory-budget-mb", str(max(1, math.ceil(budget_mb))),
            "--memory-factor", repr(float(o.memory_factor)),
            "--threads", str(o.threads),
            "--concurrency", str(concurrency),
            "--max-body-mb", str(o.max_body_mb),
            "--ready-file", str(ready_file),
            "--log-level", o.log_level,
            *(o.tls.args() if o.tls is not None else []),
            *(["--ca-bundle", str(o.ca_bundle)] if o.ca_bundle is not None else []),
        ]  # fmt: skip

    # -- the protocol --------------------------------------------------------------------------

    async def start(
        self, instance_id: int, *, memory_mb: int, budget_mb: float, concurrency: int
    ) -> InstanceInfo:
        if self._closed:
            raise PlatformError("the local backend is closed")
        if instance_id in self._instances:
            raise PlatformError(f"instance {instance_id} is already running")
        run_dir = self.options.run_dir
        ready_file = run_dir / f"instance-{instance_id}.ready"
        log_path = run_dir / f"instance-{instance_id}.log"
        command = self.instance_command(
            budget_mb=budget_mb, concurrency=concurrency, ready_file=ready_file
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def spawn() -> subprocess.Popen[bytes] | ForkedProcess:
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            ready_file.unlink(missing_ok=True)
            env = dict(os.environ, **{SPAWNED_AT_ENV: repr(time.time())})
            lifeline = tie_to_this_process(env)
            with log_path.open("ab") as log:
                forked = self._fork_host(command, env, lifeline, theirs, log.fileno())
                if forked is not None:
                    return forked
                return subprocess.Popen(
                    [*command, "--broker-fd", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    pass_fds=(lifeline, theirs.fileno()),
                    start_new_session=True,
                )

        try:
            popen = await self._call(spawn)
        except OSError as exc:
            ours.close()
            raise PlatformError(f"could not start instance {instance_id}: {exc}") from exc
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        inst = _LocalInstance(popen, log_path, ready_file, memory_mb, budget_mb)
        inst.broker = ours
        inst.ready = loop.create_future()
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_broker, instance_id, inst)
        self._instances[instance_id] = inst
        _log.event(
            "platform.instance_spawned",
            instance=instance_id,
            pid=popen.pid,
            memory_mb=memory_mb,
            budget_mb=budget_mb,
        )
        assert inst.ready is not None
        while True:  # the host says it is ready on the broker socket
            done, _ = await asyncio.wait({inst.ready}, timeout=_POLL_S)
            if done:
                break
            code = popen.poll()
            if code is not None:
                raise PlatformError(
                    f"instance {instance_id} exited with status {code} before it was ready "
                    f"(log: {log_path}): {_tail(log_path)}"
                )
        try:
            ready = inst.ready.result()
            url = str(ready["url"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PlatformError(
                f"instance {instance_id} announced an unreadable ready line"
            ) from exc
        timings = {
            name: float(ready[key])
            for name, key in (
                ("sandbox_start", "sandbox_start_ms"),
                ("runtime_start", "runtime_start_ms"),
            )
            if isinstance(ready.get(key), int | float)
        }
        info = InstanceInfo(
            instance_id=instance_id,
            url=url,
            pid=int(ready.get("pid", popen.pid)),
            runtime_pid=_int_or_none(ready.get("runtime_pid")),
            measurement=str(ready.get("measurement") or "") or None,
            timings=timings,
        )
        token = ready.get("control_token")
        inst.client = InstanceClient(
            url, ssl_context=self._ssl, control_token=token if isinstance(token, str) else None
        ).open()
        inst.sandbox_start_ms = timings.get("sandbox_start")
        if inst.link is not None and inst.link.generation == 1 and inst.sandbox_start_ms:
            inst.link.add_cold_stage("sandbox_start", inst.sandbox_start_ms)
        inst.info = info
        inst.runtime_pid = info.runtime_pid
        _log.event(
            "platform.instance_ready", instance=instance_id, url=url, runtime_pid=info.runtime_pid
        )
        return info

    # -- the host template (zygote) ------------------------------------------------------------

    def prepare(self) -> None:
        """Start the host template now (else on the first start), so that the first cold
        start already forks a host instead of starting a Python process."""
        if self.options.zygote and not self._closed:
            self._zygote_client()

    def _zygote_client(self) -> ForkClient | None:
        with self._zygote_lock:
            client = self._zygote
            if client is not None and not client.closed:
                return client
            if self._zygote_popen is not None:
                _stop_popen(self._zygote_popen, 5.0)
                self._zygote_popen = None
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            env = dict(os.environ)
            env.pop(LIFELINE_ENV, None)  # it ends when the control socket closes
            self.options.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                with (self.options.run_dir / "zygote.log").open("ab") as log:
                    self._zygote_popen = subprocess.Popen(
                        [self.options.python, "-m", "sealserve", "instance", "zygote",
                         "--control-fd", str(theirs.fileno()),
                         "--log-level", self.options.log_level],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                        pass_fds=(theirs.fileno(),), start_new_session=True,
                    )  # fmt: skip
            except OSError as exc:
                ours.close()
                _log.event("platform.zygote_failed", level=logging.WARNING, error=str(exc))
                return None
            finally:
                theirs.close()
            self._zygote = ForkClient(ours, name="host-zygote")
            _log.event("platform.zygote_started", pid=self._zygote_popen.pid)
            return self._zygote

    def _fork_host(
        self,
        command: list[str],
        env: dict[str, str],
        lifeline: int,
        broker: socket.socket,
        log: int,
    ) -> ForkedProcess | None:
        """The host forked from the template (``None``: start it as a process instead).  In
        the child the lifeline is descriptor 3 and the broker socket 4."""
        if not self.options.zygote:
            return None
        client = self._zygote_client()
        if client is None:
            return None
        args = [*command[command.index("instance") :], "--broker-fd", "4"]
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            return client.fork(
                args,
                env={**env, LIFELINE_ENV: "3"},
                stdio=(null, log, log),
                fds=(lifeline, broker.fileno()),
            )
        except (OSError, ValueError) as exc:
            _log.event("platform.zygote_fork_failed", level=logging.WARNING, error=str(exc))
            return None
        finally:
            os.close(null)

    # -- the broker socket and the data link --------------------------------------------------

    def _on_broker(self, instance_id: int, inst: _LocalInstance) -> None:
        """The host sent something (on the event loop; the socket is non-blocking)."""
        sock = inst.broker
        if sock is None:
            return
        while True:
            try:
                message = receive_broker_message(sock)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ValueError) as exc:
                _log.event("platform.broker_refused", level=logging.WARNING,
                           instance=instance_id, error=str(exc))  # fmt: skip
                continue
            if message is None:  # the host closed it (it is stopping)
                self._drop_broker(inst)
                return
            self._on_broker_message(instance_id, inst, message)

    def _on_broker_message(
        self, instance_id: int, inst: _LocalInstance, message: BrokerMessage
    ) -> None:
        try:
            if message.event == "instance.ready":
                if inst.ready is not None and not inst.ready.done():
                    inst.ready.set_result(message.doc)
            elif message.event == "runtime.link" and self.options.data_link:
                sock = message.take_socket()
                generation = message.doc.get("generation")
                if sock is None or not isinstance(generation, int) or isinstance(generation, bool):
                    if sock is not None:
                        sock.close()
                    return
                task = asyncio.get_running_loop().create_task(
                    self._open_link(instance_id, inst, sock, generation, message.doc)
                )
                self._link_tasks.add(task)
                task.add_done_callback(self._link_tasks.discard)
        finally:
            message.close()

    async def _open_link(
        self,
        instance_id: int,
        inst: _LocalInstance,
        sock: socket.socket,
        generation: int,
        doc: Mapping[str, Any],
    ) -> None:
        cold: dict[str, float] = {}
        runtime_ms = doc.get("runtime_start_ms")
        if isinstance(runtime_ms, int | float) and not isinstance(runtime_ms, bool):
            cold["runtime_start"] = float(runtime_ms)
        if generation == 1 and inst.sandbox_start_ms is not None:
            cold["sandbox_start"] = inst.sandbox_start_ms
        try:
            link = await self._call(
                lambda: RuntimeLink.open(
                    sock,
                    generation=generation,
                    runtime_pid=_int_or_none(doc.get("runtime_pid")),
                    max_body_bytes=self.options.max_body_mb << 20,
                    name=f"link-{instance_id}-{generation}",
                    cold_start=cold,
                )
            )
        except (SealserveError, OSError) as exc:
            _log.event("platform.link_failed", level=logging.WARNING, instance=instance_id,
                       generation=generation, error=type(exc).__name__)  # fmt: skip
            return
        if self._instances.get(instance_id) is not inst or inst.broker is None:
            link.close()
            return
        old, inst.link = inst.link, link
        if old is not None:
            old.close()
        _log.event("platform.link_open", instance=instance_id, generation=generation)

    def _drop_broker(self, inst: _LocalInstance) -> None:
        sock, inst.broker = inst.broker, None
        if sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _link(self, instance_id: int) -> RuntimeLink | None:
        inst = self._instances.get(instance_id)
        if inst is None or inst.info is None or inst.link is None:
            return None
        return inst.link if inst.link.usable else None

    # -- calls -----------------------------------------------------------------------------------

    async def load(
        self, instance_id: int, *, model_id: str, user_id: str, timeout_s: float
    ) -> Mapping[str, float]:
        link = self._link(instance_id)
        if link is not None:
            return await link.load(model_id=model_id, user_id=user_id, timeout_s=timeout_s)
        client = self._client(instance_id)
        return await self._call(
            lambda: client.load(model_id=model_id, user_id=user_id, timeout_s=timeout_s)
        )

    async def evict(self, instance_id: int, *, model_id: str) -> bool:
        link = self._link(instance_id)
        if link is not None:
            return await link.evict(model_id=model_id)
        client = self._client(instance_id)
        return await self._call(lambda: client.evict(model_id))

    async def infer(
        self,
        instance_id: int,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray,
        deadline_ms: int,
    ) -> InferOutcome:
        link = self._link(instance_id)
        if link is not None:
            return await link.infer(
                model_id=model_id,
                user_id=user_id,
                request_id=request_id,
                sealed_input=sealed_input,
                deadline_ms=deadline_ms,
            )
        client = self._client(instance_id)
        result = await self._call(
            lambda: client.infer(
                model_id=model_id,
                user_id=user_id,
                request_id=request_id,
                sealed_input=sealed_input,
                deadline_ms=deadline_ms,
            )
        )
        return InferOutcome(result.sealed_output, result.timings)

    async def health(self, instance_id: int) -> InstanceHealth:
        inst = self._instances.get(instance_id)
        if inst is None or inst.popen.poll() is not None:
            return InstanceHealth.GONE
        if inst.info is None:
            return InstanceHealth.RESTARTING
        url = inst.info.url
        status = await self._call(lambda: _check_health(url, self._ssl))
        if status in (InstanceHealth.READY, InstanceHealth.RESTARTING):
            inst.resident_mb = await self._call(lambda: self._measure(inst))
        return status

    def _measure(self, inst: _LocalInstance) -> float | None:
        """What the host and its current runtime use now (MB), if it can be read."""
        pid = inst.runtime_pid
        if (pid is None or process_memory(pid) is None) and inst.client is not None:
            try:
                found = inst.client.stats().get("supervisor", {}).get("runtime_pid")
            except (SealserveError, OSError, ValueError, AttributeError):
                found = None
            pid = inst.runtime_pid = _int_or_none(found)
        if pid is None:
            return None
        return pair_resident_mb((inst.popen.pid, pid))

    async def stop(self, instance_id: int) -> None:
        inst = self._instances.pop(instance_id, None)
        if inst is None:
            return
        link, inst.link = inst.link, None
        if link is not None:
            link.close()
        self._drop_broker(inst)
        await self._call(lambda: self._stop_sync(instance_id, inst))

    def _stop_sync(self, instance_id: int, inst: _LocalInstance) -> None:
        if inst.client is not None:
            inst.client.close()
        popen = inst.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(self.options.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                _log.event(
                    "stop.killed",
                    level=logging.WARNING,
                    pid=popen.pid,
                    process=f"instance host i{instance_id}",
                    reason=f"not stopped {self.options.stop_timeout_s:g} s after SIGTERM",
                )
                popen.wait(10)
        if isinstance(popen, ForkedProcess):
            popen.close()
        inst.ready_file.unlink(missing_ok=True)
        _log.event("platform.instance_stopped", instance=instance_id, status=popen.returncode)

    def describe(self, instance_id: int) -> InstanceInfo | None:
        inst = self._instances.get(instance_id)
        if inst is None or inst.info is None:
            return None
        link = inst.link if inst.link is not None and inst.link.usable else None
        return dataclasses.replace(
            inst.info,
            runtime_pid=inst.runtime_pid,
            resident_mb=inst.resident_mb,
            data_link=None if link is None else link.generation,
        )

    def log_path(self, instance_id: int) -> Path | None:
        inst = self._instances.get(instance_id)
        return None if inst is None else inst.log_path

    async def close(self) -> None:
        """Stop every instance, within a bound: a host that has not ended after
        ``stop_timeout_s`` and the kill's own wait (it may be stopped, or its I/O threads
        stuck on it) is killed here with its process group, and named in the log."""
        self._closed = True
        hosts = {iid: inst.popen for iid, inst in self._instances.items()}
        stops = [asyncio.ensure_future(self.stop(iid)) for iid in list(self._instances)]
        if stops:
            _, late = await asyncio.wait(stops, timeout=self.options.stop_timeout_s + _KILL_S)
            if late:
                _log.event(
                    "stop.timed_out",
                    level=logging.WARNING,
                    step="platform.instance_stops",
                    bound_s=self.options.stop_timeout_s + _KILL_S,
                )
        for iid, popen in hosts.items():
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                _log.event(
                    "stop.killed",
                    level=logging.WARNING,
                    pid=popen.pid,
                    process=f"instance host i{iid}",
                    reason="still alive after its stop",
                )
        with self._zygote_lock:
            client, self._zygote = self._zygote, None
            zygote, self._zygote_popen = self._zygote_popen, None
        if client is not None:
            client.close()  # the host template ends when its control socket closes
        if zygote is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: _stop_popen(zygote, 10.0)
            )
        # Threads still blocked on a host that is gone end with their sockets; none is waited
        # for here, and queued work is dropped.
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"LocalBackend(instances={sorted(self._instances)})"


def _stop_popen(popen: subprocess.Popen[bytes], timeout: float) -> None:
    if popen.poll() is None:
        popen.terminate()
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(10)


def _check_health(url: str, context: ssl.SSLContext | None = None) -> InstanceHealth:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or "127.0.0.1"
    connection: http.client.HTTPConnection
    if parsed.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parsed.port, timeout=_HEALTH_TIMEOUT_S, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, parsed.port, timeout=_HEALTH_TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return InstanceHealth.UNREACHABLE
    finally:
        connection.close()
    if response.status == 200:
        return InstanceHealth.READY
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        status = None
    return InstanceHealth.FAILED if status == "failed" else InstanceHealth.RESTARTING


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tail(path: Path, limit: int = 600) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-limit:]
