"""Launch the ``keyservice`` entry through a platform and wait until it listens.

The launcher (an embedded :class:`~sealserve.attest.tee.SimulatedPlatform` or a
:class:`~sealserve.attest.tee.PlatformClient` to a daemon) is the untrusted host's view: it passes
the unmeasured arguments, the measured config (:func:`measured_config`), and reads the ready
line the service prints on its stdout.

With ``workers`` > 1 the host binds one listening socket per process on one port
(``SO_REUSEPORT``) and launches that many KeyService processes, each measured and attested on
its own, each handed its socket: the kernel spreads connections over them.  They unseal the
same master key (the same code on the same platform has the same sealing key), so they derive
the same identity from it and keep every single-use nonce in the database, so a
client may attest one and be answered by another.  The first is launched alone and ready
before the others start (it creates or migrates the schema).
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

from sealserve._serving import bind_listener
from sealserve._tls import TlsFiles
from sealserve.attest.tee import Launcher, MeasuredProcess
from sealserve.config import KeyServiceSettings
from sealserve.errors import KeyServiceError
from sealserve.keyservice._measured import limit_args, measured_config

__all__ = ["LaunchedKeyService", "launch_args", "launch_keyservice", "read_ready_line"]


@dataclasses.dataclass(frozen=True)
class LaunchedKeyService:
    """A running KeyService: its processes (one or more on one port) and what their ready
    lines said."""

    processes: tuple[MeasuredProcess, ...]
    url: str
    keyservice_id: str
    database: str

    @property
    def process(self) -> MeasuredProcess:
        """The first process (the only one unless launched with several workers)."""
        return self.processes[0]

    @property
    def measurement(self) -> str:
        return self.processes[0].measurement

    def stop(self, *, timeout: float = 20.0) -> int | None:
        """SIGTERM every process, wait for their graceful shutdown, release the handles; the
        exit status (the first non-zero one, or None if one did not stop in time)."""
        return _stop(self.processes, timeout)


def _stop(processes: tuple[MeasuredProcess, ...], timeout: float) -> int | None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        codes.append(process.wait(max(0.0, deadline - time.monotonic())))
        process.close()
    if any(code is None for code in codes):
        return None
    return next((code for code in codes if code), 0)


def launch_args(
    settings: KeyServiceSettings,
    *,
    data_dir: Path,
    platform_key: Path | None = None,
    log_level: str = "INFO",
    inherit_socket: bool = False,
    tls: TlsFiles | None = None,
    join: str | None = None,
) -> list[str]:
    """The (unmeasured) command line of the ``keyservice`` entry for ``settings``.

    TLS is not measured: it carries metadata privately; every key crosses the network wrapped
    to an attested key and every answer is signed by the KeyService (docs/deployment.md)."""
    args = [
        "--data-dir", str(Path(data_dir).resolve()),
        "--host", settings.host,
        "--port", str(settings.port),
        "--max-body-bytes", str(settings.max_body_bytes),
        "--rate-limit-per-s", repr(float(settings.rate_limit_per_s)),
        "--rate-limit-burst", str(settings.rate_limit_burst),
        "--log-level", log_level,
        *limit_args(settings),
    ]  # fmt: skip
    if settings.db_url:
        args += ["--db", settings.db_url]
    if platform_key is not None:
        args += ["--platform-key", str(Path(platform_key).resolve())]
    if settings.snp_cache is not None:
        args += ["--snp-cache", str(Path(settings.snp_cache).resolve())]
    if inherit_socket:
        args.append("--inherit-socket")
    if tls is not None:
        args += ["--tls-cert", str(tls.cert.resolve()), "--tls-key", str(tls.key.resolve())]
    if join:
        args += ["--join", join]
    return args


def launch_keyservice(
    launcher: Launcher,
    settings: KeyServiceSettings,
    *,
    data_dir: Path,
    platform_key: Path | None = None,
    log_level: str = "INFO",
    stderr: int | None = None,
    ready_timeout_s: float = 60.0,
    workers: int = 1,
    tls: TlsFiles | None = None,
    join: str | None = None,
) -> LaunchedKeyService:
    """Launch the KeyService (``workers`` processes on one port; HTTPS with ``tls``) and
    return once every process accepts connections; ``join``: the URL of a running KeyService
    of the same measurement to obtain the master key from when it does not unseal here."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    socks = _listeners(settings.host, settings.port, workers) if workers > 1 else []
    args = launch_args(
        settings,
        data_dir=data_dir,
        platform_key=platform_key,
        log_level=log_level,
        inherit_socket=bool(socks),
        tls=tls,
        join=join,
    )
    config = measured_config(settings)
    started: list[MeasuredProcess] = []
    readies: list[dict[str, Any]] = []
    try:
        for index in range(workers):
            fds = (socks[index].fileno(),) if socks else ()
            process, ready = _launch_one(
                launcher, args, config, fds, stderr=stderr, timeout_s=ready_timeout_s
            )
            started.append(process)
            readies.append(ready)
        ids = {str(ready["keyservice_id"]) for ready in readies}
        if len(ids) != 1:
            raise KeyServiceError(
                f"the KeyService processes report {len(ids)} identities; they must share one "
                "database and one sealing key (the same build on the same platform)"
            )
    except BaseException:
        _stop(tuple(started), 10.0)
        raise
    finally:
        for sock in socks:
            sock.close()  # the processes hold them now
    first = readies[0]
    return LaunchedKeyService(
        processes=tuple(started),
        url=str(first["url"]),
        keyservice_id=str(first["keyservice_id"]),
        database=str(first["database"]),
    )


def _listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (the first picks it when ``port`` is 0)."""
    first = bind_listener(host, port, reuse_port=True)
    socks = [first]
    try:
        bound = first.getsockname()[1]
        socks += [bind_listener(host, bound, reuse_port=True) for _ in range(count - 1)]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _launch_one(
    launcher: Launcher,
    args: list[str],
    config: dict[str, str],
    fds: tuple[int, ...],
    *,
    stderr: int | None,
    timeout_s: float,
) -> tuple[MeasuredProcess, dict[str, Any]]:
    read_fd, write_fd = os.pipe()
    try:
        process = launcher.launch(
            "keyservice", args=args, config=config, fds=fds, stdout=write_fd, stderr=stderr
        )
    finally:
        os.close(write_fd)
    try:
        ready = read_ready_line(read_fd, process, timeout_s)
    finally:
        os.close(read_fd)
    if ready is None:
        code = process.wait(5)
        process.close()
        raise KeyServiceError(
            f"the KeyService exited before it was ready (status {code}); see its log"
        )
    return process, ready


def read_ready_line(fd: int, process: MeasuredProcess, timeout_s: float) -> dict[str, Any] | None:
    """The JSON object of the first line a launched KeyService writes to ``fd`` (the read end
    of its stdout); ``None`` when it exits, or closes its stdout, or ``timeout_s`` passes
    first.  The caller closes ``fd``."""
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buffer += chunk
            if b"\n" in buffer:
                doc = json.loads(buffer.split(b"\n", 1)[0])
                return doc if isinstance(doc, dict) else None
        elif process.wait(0) is not None:
            return None
    return None
