"""Run one instance: the HTTP host on uvicorn, the runtime behind it, a ready line when both are up.

:func:`serve_instance` binds the port first (so ``--port 0`` works), launches the runtime in
the background while uvicorn starts, and once both are up writes one JSON line to
``ready_stream`` (and, atomically, to ``ready_file``)::

    {"event": "instance.ready", "url": "http://127.0.0.1:41234", "host": "127.0.0.1",
     "port": 41234, "pid": 1234, "runtime_pid": 1240, "measurement": "<runtime measurement>",
     "sandbox_start_ms": 612.3, "runtime_start_ms": 954.1, "control_token": "..."}

``control_token`` is what the host's control calls (``/v1/load``, ``/v1/evict``) need: only
the launcher reads the ready line (the ready file is written 0600).

It stops cleanly on SIGINT or SIGTERM (in-flight requests finish, the runtime is closed).
A platform that starts instances can pass ``SEALSERVE_SPAWNED_AT`` (Unix seconds, when it
spawned the process) for a precise ``sandbox_start``; otherwise the process start time is
read from ``/proc``.  With a ``broker`` socket (:mod:`._broker`) the ready line also goes
there, and so does each runtime generation's data link: the platform then sends requests
straight to the runtime over shared memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TextIO

from prometheus_client import CollectorRegistry

from sealserve._log import get_logger
from sealserve._serving import ReadyServer, ServerLimits, base_url, bind_listener, server_config
from sealserve._tls import TlsFiles, client_context
from sealserve.attest.tee import Launcher
from sealserve.errors import InstanceError, SealserveError
from sealserve.instance._app import HostOptions, InstanceHost
from sealserve.instance._broker import HostBroker
from sealserve.instance._store import open_store
from sealserve.instance._supervisor import (
    RuntimeGeneration,
    RuntimeSupervisor,
    SupervisorOptions,
)

__all__ = ["SPAWNED_AT_ENV", "InstanceConfig", "process_age_s", "serve_instance"]

_log = get_logger(__name__)

#: Set by a platform to the Unix time it spawned the instance process.
SPAWNED_AT_ENV: Final = "SEALSERVE_SPAWNED_AT"
_SWITCH_INTERVAL_S: Final = 0.0005


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstanceConfig:
    """Everything one instance needs besides its TEE launcher and the runtime's pin."""

    #: The model store: a directory, or an fsspec URL (:func:`~sealserve.instance.open_store`).
    store_dir: Path | str
    keyservice_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    #: Serve HTTPS with these files (the gateway verifies them against its CA bundle).
    tls: TlsFiles | None = None
    #: What an https:// KeyService's certificate must chain to (default: the system's roots).
    ca_bundle: Path | None = None
    http: HostOptions = dataclasses.field(default_factory=HostOptions)
    runtime: SupervisorOptions = dataclasses.field(default_factory=SupervisorOptions)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within [0, 65535], got {self.port!r}")
        if not self.keyservice_url.startswith(("http://", "https://")):
            raise ValueError(f"keyservice_url must be an http(s) URL, got {self.keyservice_url!r}")


def process_age_s() -> float | None:
    """Seconds since this process was spawned (``SEALSERVE_SPAWNED_AT`` or ``/proc``)."""
    spawned = os.environ.get(SPAWNED_AT_ENV)
    if spawned:
        with contextlib.suppress(ValueError):
            return max(0.0, time.time() - float(spawned))
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22, counted after the command name
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def serve_instance(
    config: InstanceConfig,
    *,
    launcher: Launcher,
    launch_config: Mapping[str, str],
    ready_stream: TextIO | None = None,
    ready_file: Path | None = None,
    registry: CollectorRegistry | None = None,
    broker: HostBroker | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; the exit status (0, or 1 if the runtime never started)."""
    sandbox_start_s = process_age_s()
    # The event loop and the ipc receiver thread hand replies over: a short switch interval
    # hands over the GIL in a fraction of a millisecond instead of up to 5 ms.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    registry = registry or CollectorRegistry()
    store = open_store(config.store_dir)
    holder: list[InstanceHost] = []

    def data_link(generation: RuntimeGeneration, sock: socket.socket) -> None:
        assert broker is not None
        with sock:
            broker.send(
                {
                    "event": "runtime.link",
                    "generation": generation.number,
                    "runtime_pid": generation.process.pid,
                    "runtime_start_ms": round(generation.start_s * 1000, 3),
                },
                fd=sock.fileno(),
            )

    supervisor = RuntimeSupervisor(
        launcher=launcher,
        launch_config=launch_config,
        store=store,
        keyservice_url=config.keyservice_url,
        options=config.runtime,
        registry=registry,
        stderr=sys.stderr.fileno(),
        on_start=lambda generation: holder[0].runtime_started(generation),
        on_data_link=None if broker is None else data_link,
        verify=client_context(config.ca_bundle)
        if config.keyservice_url.startswith("https://")
        else True,
    )
    host = InstanceHost(
        supervisor, options=config.http, registry=registry, sandbox_start_s=sandbox_start_s
    )
    holder.append(host)
    failure: list[BaseException] = []

    def start_runtime() -> None:
        try:
            supervisor.start()
        except BaseException as exc:
            failure.append(exc)

    starter = threading.Thread(target=start_runtime, name="runtime-start", daemon=True)
    try:
        sock = bind_listener(config.host, config.port)
    except OSError as exc:
        raise InstanceError(str(exc)) from exc
    bound_host, port = sock.getsockname()[:2]
    url = base_url(bound_host, port, tls=config.tls)
    starter.start()
    server = ReadyServer(
        server_config(
            host.app,
            log_level=config.log_level,
            lifespan="off",
            graceful_s=10,
            limit_concurrency=max(64, config.http.concurrency * 8),
            tls=config.tls,
            limits=ServerLimits(body_idle_s=config.http.body_timeout_s),
        )
    )

    async def announce() -> None:
        await asyncio.to_thread(starter.join)
        if not failure:
            try:
                generation = supervisor.current(timeout=0)
            except SealserveError as exc:  # it died between its start and now
                failure.append(exc)
        if failure:
            _log.event("instance.runtime_failed", error=str(failure[0]))
            server.should_exit = True
            return
        line = {
            "event": "instance.ready",
            "url": url,
            "host": bound_host,
            "port": port,
            "pid": os.getpid(),
            "runtime_pid": generation.process.pid,
            "measurement": generation.process.measurement,
            "sandbox_start_ms": None
            if sandbox_start_s is None
            else round(sandbox_start_s * 1e3, 3),
            "runtime_start_ms": round(generation.start_s * 1000, 3),
            # For the launcher only (the ready file is 0600, the broker socket its own).
            "control_token": host.control_token,
        }
        text = json.dumps(line)
        _log.event("instance.ready", url=url, runtime_pid=generation.process.pid)
        if ready_file is not None:
            _write_atomically(ready_file, text + "\n")
        if ready_stream is not None:
            ready_stream.write(text + "\n")
            ready_stream.flush()
        if broker is not None:
            broker.send(line)

    server.on_ready = announce
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        supervisor.close()
        if broker is not None:
            broker.close()
        if ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                ready_file.unlink()
    if failure:
        raise InstanceError(f"the runtime did not start: {failure[0]}")
    _log.event("instance.stopped")
    return 0


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds a secret
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)
