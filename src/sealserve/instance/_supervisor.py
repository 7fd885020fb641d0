"""The runtime supervisor: launch SeMIRT through the TEE platform, connect, restart on crash.

The host never runs the runtime itself: it asks a :class:`~sealserve.attest.tee.Launcher` (an
embedded simulated platform or the platform daemon) to launch the ``runtime`` entry with the
measured launch config (the KeyService pin) and one end of a socket pair, on which it then
offers the ipc connection (two shared-memory channels).  One generation of runtime is one
process, one connection and one :class:`~sealserve.ecall.Endpoint`.

When the runtime dies (crash, kill, OOM), the endpoint fails every call in flight with
:class:`~sealserve.errors.RuntimeUnavailable` (retryable) and the supervisor launches the next
generation; calls made meanwhile wait for it, within their deadline.  Restarts are bounded:
more than ``max_restarts`` within ``restart_window_s`` and the supervisor gives up (state
``failed``; ``/healthz`` says so and the platform replaces the instance), with a backoff that
doubles between attempts.

It also answers the runtime's ocalls: fetching a sealed model from the store straight into a
loan of the channel, and relaying KeyService exchanges over HTTP.

With ``on_data_link``, each generation is also given a second socket, the *data link*, whose
other end goes to ``on_data_link(generation, sock)`` once the generation answers: a platform
that holds it offers its own ipc connection to the runtime on it and sends requests straight
there (the runtime serves ecalls on both; ocalls still come here).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import functools
import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client import CollectorRegistry

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve._resource import Resource, ResourceState
from sealserve.attest.tee import Launcher, MeasuredProcess
from sealserve.ecall import Endpoint, Message, wire
from sealserve.errors import (
    DeadlineExceeded,
    IPCError,
    KeyServiceError,
    MessageTooLarge,
    ModelNotAvailable,
    ModelNotStored,
    RuntimeUnavailable,
    SealserveError,
    StoreIntegrityError,
)
from sealserve.instance._store import SealedModelStore
from sealserve.ipc import ChannelOptions, Connection, Listener, QoS
from sealserve.protocol import wire as keyservice_wire

__all__ = [
    "RuntimeGeneration",
    "RuntimeHandle",
    "RuntimeSupervisor",
    "SupervisorOptions",
    "RuntimeStatus",
]

_log = get_logger(__name__)
_MIB = 1 << 20
#: Give the pages of messages at least this large back once reclaimed (models, not inputs).
_TRIM = 16 * _MIB


@functools.cache
def default_verify_context() -> ssl.SSLContext:
    """httpx's default verification (what ``verify=True`` means: certifi's roots, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built once per process and shared by its clients.

    Building it loads a CA bundle (50-300 ms on the busy 2-core machine).  The host template
    (``sealserve instance zygote``) builds it, and a first client, before it forks, so that
    every host it forks has both already.
    """
    return httpx.create_ssl_context()


_RELAY_PATHS = (
    ("GET", f"{keyservice_wire.API_PREFIX}/attestation?nonce="),
    ("POST", f"{keyservice_wire.API_PREFIX}/challenges"),
    ("POST", f"{keyservice_wire.API_PREFIX}/releases"),
    ("POST", f"{keyservice_wire.API_PREFIX}/revocations"),
)


class RuntimeStatus(enum.Enum):
    """Where the supervised runtime is (the supervisor's lifecycle is its ``state``)."""

    #: No runtime: the supervisor is not opened yet, or closed.
    STOPPED = "stopped"
    #: The first runtime is being launched.
    STARTING = "starting"
    READY = "ready"
    #: The runtime crashed; a new one is being launched.
    RESTARTING = "restarting"
    #: Launching failed, or the runtime crashed too often: the instance must be replaced.
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisorOptions:
    """How the runtime is launched and kept alive."""

    memory_budget_mb: int = 1024
    threads: int = 2
    workers: int = 4
    baseline: bool = False
    memory_factor: float = 4.0
    #: What the runtime's inferences may allocate at once (None: its memory budget).
    inference_memory_mb: int | None = None
    max_input_age_s: float = 3600.0
    #: Host -> runtime channel (inputs and sealed models): bounds the largest model.
    request_arena_bytes: int = 2048 * _MIB
    #: Runtime -> host channel (outputs, KeyService messages).
    response_arena_bytes: int = 256 * _MIB
    start_timeout_s: float = 60.0
    max_restarts: int = 5
    restart_window_s: float = 60.0
    restart_backoff_s: float = 0.1
    keyservice_timeout_s: float = 10.0
    log_level: str = "INFO"
    #: A runtime attests the KeyService as part of its start (``PREPARE``): one that cannot
    #: (a KeyService that fails its attestation, or none reachable) is not started, so no
    #: request ever reaches it.
    attest_at_start: bool = True
    #: Hand the runtime named Unix sockets to connect to instead of inherited descriptors
    #: (always so when the launcher cannot pass descriptors: a Gramine enclave inherits none).
    named_sockets: bool = False

    def __post_init__(self) -> None:
        for name in ("memory_budget_mb", "threads", "workers", "max_restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("start_timeout_s", "restart_window_s", "keyservice_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.restart_backoff_s < 0:
            raise ValueError(f"restart_backoff_s must be >= 0, got {self.restart_backoff_s!r}")

    def runtime_args(self) -> list[str]:
        args = [
            "--memory-budget-mb", str(self.memory_budget_mb),
            "--threads", str(self.threads),
            "--workers", str(self.workers),
            "--memory-factor", repr(float(self.memory_factor)),
            "--max-input-age-s", repr(float(self.max_input_age_s)),
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.baseline:
            args.append("--baseline")
        if self.inference_memory_mb is not None:
            args += ["--inference-memory-mb", str(int(self.inference_memory_mb))]
        return args


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeGeneration:
    """One runtime process and its connection."""

    number: int
    process: MeasuredProcess
    endpoint: Endpoint
    #: Seconds from asking the platform to launch it to its first answer.
    start_s: float


class RuntimeHandle(Protocol):
    """What the HTTP host needs of a supervisor (:class:`RuntimeSupervisor` is the real one)."""

    @property
    def status(self) -> RuntimeStatus: ...

    @property
    def health(self) -> str:
        """One word for ``/healthz``: the runtime's status (``ready``, ``restarting``...)."""
        ...

    @property
    def restarts(self) -> int: ...

    def current(self, *, timeout: float | None) -> RuntimeGeneration:
        """The live generation, waiting up to ``timeout`` for a (re)start."""
        ...

    def call(
        self,
        op: wire.Op,
        meta: Mapping[str, Any] | None = None,
        payload: bytes | bytearray | memoryview | None = None,
        *,
        timeout: float,
    ) -> Message:
        """One ecall (blocking); the caller releases the reply."""
        ...

    def describe(self) -> dict[str, Any]:
        """State, generation, runtime pid and measurement, restarts, last error."""
        ...


class RuntimeSupervisor(Resource):
    """Keeps one runtime alive and serves its ocalls (see the module docstring).

    Opening it (:meth:`start`, or ``with``) launches the first runtime and waits until it
    answers; closing it stops the runtime.  While it is open, :attr:`status` says where the
    runtime is; a call that races a restart or the close is a retryable
    :class:`~sealserve.errors.RuntimeUnavailable`.
    """

    resource_name = "the runtime supervisor"

    def __init__(
        self,
        *,
        launcher: Launcher,
        launch_config: Mapping[str, str],
        store: SealedModelStore,
        keyservice_url: str,
        options: SupervisorOptions | None = None,
        registry: CollectorRegistry | None = None,
        stderr: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_start: Callable[[RuntimeGeneration], None] | None = None,
        on_data_link: Callable[[RuntimeGeneration, socket.socket], None] | None = None,
        http_transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if not keyservice_url.startswith(("http://", "https://")):
            raise ValueError(f"keyservice_url must be an http(s) URL, got {keyservice_url!r}")
        super().__init__()
        self._launcher = launcher
        self._config = dict(launch_config)
        self._store = store
        self._keyservice_url = keyservice_url.rstrip("/")
        self.options = options or SupervisorOptions()
        self._registry = registry
        self._stderr = stderr
        self._clock = clock
        self._on_start = on_start
        self._on_data_link = on_data_link
        self._http = httpx.Client(
            base_url=self._keyservice_url,
            timeout=self.options.keyservice_timeout_s,
            transport=http_transport,
            verify=default_verify_context() if verify is True else verify,
        )
        self._ocalls = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="host-ocall"
        )
        self._cond = threading.Condition()
        self._status = RuntimeStatus.STARTING
        self._first: RuntimeGeneration | None = None
        self._generation: RuntimeGeneration | None = None
        self._number = 0
        self._crashes: list[float] = []
        self._restarts = 0
        self._last_error = ""
        self._restarter: threading.Thread | None = None
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def status(self) -> RuntimeStatus:
        """Where the runtime is: ``STOPPED`` unless the supervisor is open (or it failed)."""
        status = self._status
        if status is not RuntimeStatus.FAILED and self.state is not ResourceState.OPENED:
            return RuntimeStatus.STOPPED
        return status

    @property
    def health(self) -> str:
        """One word for ``/healthz``: the runtime's status, or the supervisor's state
        (``unopened``, ``closed``) while there is no runtime."""
        status = self.status
        return self.state.value if status is RuntimeStatus.STOPPED else status.value

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def last_error(self) -> str:
        return self._last_error

    @property
    def measurement(self) -> str:
        """The measurement every runtime generation carries (what owners' grants pin)."""
        return self._launcher.measurement("runtime", config=self._config)

    def start(self) -> RuntimeGeneration:
        """Open: launch the first runtime and wait until it answers; that generation."""
        self.open()
        assert self._first is not None
        return self._first

    def _open(self) -> None:
        try:
            self._first = self._launch()
        except BaseException as exc:
            with self._cond:
                self._status = RuntimeStatus.FAILED
                self._last_error = str(exc)
                self._cond.notify_all()
            raise

    def _close(self) -> None:
        """Stop the runtime (orderly: close the connection, then the process)."""
        with self._cond:
            self._closing = True
            generation, self._generation = self._generation, None
            self._cond.notify_all()
        if generation is not None:
            self._stop(generation)
        if self._restarter is not None and self._restarter is not threading.current_thread():
            self._restarter.join(10.0)
        self._ocalls.shutdown(wait=True, cancel_futures=True)
        self._http.close()
        _log.event("supervisor.closed")

    # -- use -----------------------------------------------------------------------------------

    def current(self, *, timeout: float | None) -> RuntimeGeneration:
        """The live generation, waiting up to ``timeout`` for a (re)start to finish."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                status = self.status
                if status is RuntimeStatus.READY and self._generation is not None:
                    return self._generation
                if status in (RuntimeStatus.FAILED, RuntimeStatus.STOPPED):
                    raise RuntimeUnavailable(
                        f"the runtime is {self.health}"
                        + (f": {self._last_error}" if self._last_error else "")
                    )
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RuntimeUnavailable(f"the runtime is still {status.value}; retry shortly")
                self._cond.wait(remaining)

    def call(
        self,
        op: wire.Op,
        meta: Mapping[str, Any] | None = None,
        payload: bytes | bytearray | memoryview | None = None,
        *,
        timeout: float,
    ) -> Message:
        """One ecall on the live runtime (blocking); the caller releases the reply."""
        started = time.monotonic()
        generation = self.current(timeout=timeout)
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed while the runtime was starting")
        return generation.endpoint.call(op, meta, payload, timeout=remaining)

    # -- generations ---------------------------------------------------------------------------

    def _launch_with_fds(
        self,
    ) -> tuple[socket.socket, tuple[socket.socket, socket.socket] | None, MeasuredProcess]:
        """Launch the runtime with one end of a socket pair (and of the data link's) passed."""
        opts = self.options
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        link: tuple[socket.socket, socket.socket] | None = None
        if self._on_data_link is not None:
            link = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = self._launcher.launch(
                "runtime",
                args=opts.runtime_args(),
                config=self._config,
                fds=[theirs.fileno()] + ([] if link is None else [link[1].fileno()]),
                stderr=self._stderr,
            )
        except BaseException:
            ours.close()
            if link is not None:
                link[0].close()
            raise
        finally:
            theirs.close()
            if link is not None:
                link[1].close()
        return ours, link, process

    def _launch_named(
        self, number: int
    ) -> tuple[socket.socket, socket.socket | None, MeasuredProcess]:
        """Launch the runtime with the paths of named Unix sockets this host listens on (in a
        private directory, removed once the runtime connected), and accept its connections."""
        opts = self.options
        folder = Path(tempfile.mkdtemp(prefix="sealserve-rt-"))
        listeners: list[Listener] = []
        try:
            listeners.append(Listener.bind(folder / "ipc.sock", backlog=1))
            args = [*opts.runtime_args(), "--ipc-socket", str(folder / "ipc.sock")]
            if self._on_data_link is not None:
                listeners.append(Listener.bind(folder / "data.sock", backlog=1))
                args += ["--data-socket", str(folder / "data.sock")]
            process = self._launcher.launch(
                "runtime", args=args, config=self._config, stderr=self._stderr
            )
            try:
                accepted = [self._accept(listener, process, number) for listener in listeners]
            except BaseException:
                process.close()
                raise
        finally:
            for listener in listeners:
                listener.close()
            shutil.rmtree(folder, ignore_errors=True)
        _log.event(
            "supervisor.runtime_connected", generation=number, via="named", sockets=len(accepted)
        )
        return accepted[0], (accepted[1] if len(accepted) > 1 else None), process

    def _accept(self, listener: Listener, process: MeasuredProcess, number: int) -> socket.socket:
        """The runtime's connection on ``listener``; gives up when it exits or the start
        timeout passes (bounded: polls of 0.2 s)."""
        deadline = time.monotonic() + self.options.start_timeout_s
        while True:
            try:
                return listener.accept(timeout=0.2)
            except IPCError:  # nobody connected within the poll
                pass
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeUnavailable(
                    f"the runtime (generation {number}) did not connect to its named socket"
                )

    def _launch(self) -> RuntimeGeneration:
        opts = self.options
        with self._cond:
            self._number += 1
            number = self._number
        started = time.perf_counter()
        named = opts.named_sockets or not getattr(self._launcher, "passes_fds", True)
        link: tuple[socket.socket, socket.socket] | None
        if named:
            ours, link_ours, process = self._launch_named(number)
            link = None if link_ours is None else (link_ours, link_ours)
        else:
            ours, link, process = self._launch_with_fds()
        try:
            connection = Connection.create(
                ours,
                request=ChannelOptions(arena_bytes=opts.request_arena_bytes, trim_above=16 * _MIB),
                response=ChannelOptions(
                    arena_bytes=opts.response_arena_bytes, trim_above=16 * _MIB
                ),
                name=f"runtime-{process.pid}",
                timeout=opts.start_timeout_s,
                registry=self._registry,
                qos=QoS.EFFICIENCY,  # replies take milliseconds: spinning only steals cores
            )
        except BaseException as exc:
            ours.close()
            if link is not None:
                link[0].close()
            process.close()
            raise RuntimeUnavailable(f"the runtime did not connect: {exc}") from exc
        holder: list[Endpoint] = []
        endpoint = Endpoint(
            connection,
            name=f"host-{number}",
            handler=lambda message: self._ocall(holder[0], message),
            broken_error=RuntimeUnavailable,
            on_broken=lambda exc: self._failed(number, f"connection lost: {exc}"),
        )
        holder.append(endpoint)
        endpoint.open()
        try:
            endpoint.call(wire.Op.STATS, {}, timeout=opts.start_timeout_s).release()
            if opts.attest_at_start:
                meta = {"timeout_s": round(opts.keyservice_timeout_s, 6)}
                endpoint.call(
                    wire.Op.PREPARE, meta, timeout=opts.keyservice_timeout_s + 5.0
                ).release()
        except BaseException as exc:
            endpoint.close()
            if link is not None:
                link[0].close()
            process.close()
            _log.event("supervisor.start_failed", level=logging.WARNING, generation=number,
                       error=type(exc).__name__, message=str(exc))  # fmt: skip
            raise RuntimeUnavailable(f"the runtime did not start: {exc}") from exc
        generation = RuntimeGeneration(number, process, endpoint, time.perf_counter() - started)
        watcher = threading.Thread(
            target=self._watch, args=(generation,), name=f"runtime-watch-{number}", daemon=True
        )
        with self._cond:
            if self._closing:
                if link is not None:
                    link[0].close()
                self._stop(generation)
                raise RuntimeUnavailable("the instance is closing")
            self._generation = generation
            self._status = RuntimeStatus.READY
            self._cond.notify_all()
        watcher.start()
        _log.event(
            "supervisor.runtime_ready",
            generation=number,
            pid=process.pid,
            measurement=process.measurement,
            start_ms=round(generation.start_s * 1000, 3),
        )
        if self._on_start is not None:
            self._on_start(generation)
        if link is not None and self._on_data_link is not None:
            self._on_data_link(generation, link[0])  # it owns the socket now
        return generation

    def _watch(self, generation: RuntimeGeneration) -> None:
        code = generation.process.wait(None)
        self._failed(generation.number, f"the runtime exited with status {code}")

    def _failed(self, number: int, reason: str) -> None:
        with self._cond:
            generation = self._generation
            if self._closing or generation is None or generation.number != number:
                return
            self._generation = None
            self._status = RuntimeStatus.RESTARTING
            self._last_error = reason
            now = self._clock.monotonic()
            self._crashes = [t for t in self._crashes if now - t < self.options.restart_window_s]
            self._crashes.append(now)
            give_up = len(self._crashes) > self.options.max_restarts
            if give_up:
                self._status = RuntimeStatus.FAILED
            self._cond.notify_all()
        _log.event(
            "supervisor.runtime_lost",
            level=logging.WARNING,
            generation=number,
            reason=reason,
            giving_up=give_up,
        )
        threading.Thread(target=self._stop, args=(generation,), daemon=True).start()
        if not give_up:
            self._restarter = threading.Thread(
                target=self._restart, name="runtime-restart", daemon=True
            )
            self._restarter.start()

    def _restart(self) -> None:
        backoff = self.options.restart_backoff_s * (2 ** max(0, len(self._crashes) - 1))
        time.sleep(min(backoff, 5.0))
        attempts = 0
        while not self._closing:
            attempts += 1
            try:
                self._launch()
            except (SealserveError, OSError) as exc:
                with self._cond:
                    self._last_error = str(exc)
                    if attempts >= self.options.max_restarts:
                        self._status = RuntimeStatus.FAILED
                        self._cond.notify_all()
                        _log.event("supervisor.gave_up", level=logging.ERROR, error=str(exc))
                        return
                time.sleep(min(self.options.restart_backoff_s * 2**attempts, 5.0))
                continue
            with self._cond:
                self._restarts += 1
            return

    @staticmethod
    def _stop(generation: RuntimeGeneration) -> None:
        generation.endpoint.close()  # the runtime sees an orderly close and exits
        if generation.process.wait(5.0) is None:
            generation.process.terminate()
            if generation.process.wait(5.0) is None:
                generation.process.kill()
        generation.process.close()

    # -- ocalls (on the receiver thread: hand over to the pool) --------------------------------

    def _ocall(self, endpoint: Endpoint, message: Message) -> None:
        try:
            self._ocalls.submit(self._serve_ocall, endpoint, message)
        except RuntimeError:  # shutting down
            message.release()

    def _serve_ocall(self, endpoint: Endpoint, message: Message) -> None:
        try:
            if message.op is wire.Op.FETCH_MODEL:
                self._fetch(endpoint, message)
            elif message.op is wire.Op.KEYSERVICE:
                self._relay(endpoint, message)
            else:
                message.release()
                endpoint.reply_error(message, ValueError(f"{message.op.name} is not an ocall"))
        except Exception as exc:
            message.release()
            _log.event("supervisor.ocall_failed", level=logging.WARNING, op=message.op.name,
                       error=type(exc).__name__, message=str(exc))  # fmt: skip
            endpoint.reply_error(message, exc)

    def _fetch(self, endpoint: Endpoint, message: Message) -> None:
        model_id = message.meta.get("model_id")
        message.release()
        if not isinstance(model_id, str):
            raise ValueError("fetch_model needs a model_id")
        started = time.perf_counter()
        try:
            manifest = self._store.get(model_id)
        except ModelNotStored as exc:
            raise ModelNotAvailable(str(exc)) from None
        meta = {
            "model_id": model_id,
            "key_version": manifest.key_version,
            "size": manifest.size,
            "digest": manifest.digest,
        }

        def write(view: memoryview) -> None:  # straight from the file into the loan
            self._store.read_into(model_id, view)

        try:
            endpoint.reply(message, meta, payload_len=manifest.size, writer=write)
        except (StoreIntegrityError, ModelNotStored) as exc:
            raise ModelNotAvailable(str(exc)) from None
        except MessageTooLarge:
            raise ModelNotAvailable(
                f"model {model_id!r} is {manifest.size} bytes sealed, more than the channel to "
                f"the runtime carries ({self.options.request_arena_bytes} bytes): raise "
                "request_arena_bytes"
            ) from None
        _log.event(
            "supervisor.model_sent",
            model_id=model_id,
            bytes=manifest.size,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def _relay(self, endpoint: Endpoint, message: Message) -> None:
        meta = message.meta
        method, path = meta.get("method"), meta.get("path")
        body = bytes(message.payload)
        message.release()
        if not any(method == m and isinstance(path, str) and _path_ok(path, p)
                   for m, p in _RELAY_PATHS):  # fmt: skip
            raise ValueError(f"the host relays only the key release protocol, not {method} {path}")
        assert isinstance(method, str)
        assert isinstance(path, str)
        timeout = meta.get("timeout_s")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            timeout = self.options.keyservice_timeout_s
        try:
            response = self._http.request(
                method,
                path,
                content=body if method == "POST" else None,
                headers={"content-type": "application/json"} if method == "POST" else None,
                timeout=min(float(timeout), self.options.keyservice_timeout_s),
            )
        except httpx.HTTPError as exc:
            error = KeyServiceError(
                f"the KeyService at {self._keyservice_url} is unreachable: {type(exc).__name__}"
            )
            error.retryable = True
            raise error from None
        endpoint.reply(message, {"status": response.status_code}, response.content)

    # -- reading -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        generation = self._generation
        return {
            "state": self.health,
            "generation": None if generation is None else generation.number,
            "runtime_pid": None if generation is None else generation.process.pid,
            "measurement": None if generation is None else generation.process.measurement,
            "restarts": self._restarts,
            "last_error": self._last_error or None,
        }


def _path_ok(path: str, allowed: str) -> bool:
    if allowed.endswith("="):
        return path.startswith(allowed) and "/" not in path[len(allowed) :]
    return path == allowed
