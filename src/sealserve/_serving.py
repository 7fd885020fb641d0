"""What the KeyService, the instance host and the gateway share to serve HTTP with uvicorn.

Each binds its listening socket first (so port 0 works), builds a :func:`server_config`, and
runs a :class:`ReadyServer`, which calls ``on_ready`` once the socket accepts connections and
treats a stop on SIGINT or SIGTERM as a clean exit.  Given TLS files (:class:`~._tls.TlsFiles`)
the server speaks HTTPS, and :func:`base_url` says so.

**Slow clients** (slowloris) are bounded in the HTTP protocol itself (:class:`ServerLimits`,
:func:`guarded_protocol`): uvicorn on its own waits forever for a request head that never
ends and for a body that stalls, each holding a connection (and, in the instance host, a
request slot).  A request head must now be complete within ``head_timeout_s`` of the
connection or of the previous answer (else the connection is closed); a body may not wait
longer than ``body_idle_s`` for its next byte and must average ``min_body_rate`` bytes/s
after that (else 408 and close); one client address holds at most
``max_connections_per_source`` connections (else 429 and close).

For several processes on one port (the KeyService's launcher) one socket is bound per
process, all on that port with ``reuse_port``, and each process gets its own: the kernel then
spreads new connections evenly over them (by a hash of the connection's addresses).  One
socket shared by all would not: whichever process wakes first accepts every connection
waiting, so a client's few keep-alive connections would all land on one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sealserve._tls import TlsFiles

__all__ = [
    "ReadyServer",
    "ServerLimits",
    "base_url",
    "bind_listener",
    "guarded_protocol",
    "server_config",
    "url_host",
]

# The JSON log lines of sealserve._log, written with the standard library (this module sits
# beside _log in the layers and does not import it).
_logger = logging.getLogger(__name__)


def _event(name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if _logger.isEnabledFor(level):
        _logger.log(level, name, extra={"sealserve_fields": fields})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """What a slow or stalled client may hold (see the module docstring)."""

    #: A request head must be complete within this long of the connection or last answer.
    head_timeout_s: float = 30.0
    #: The longest wait for a body's next byte.
    body_idle_s: float = 10.0
    #: After its first ``body_idle_s``, a body must average at least this (bytes/s).
    min_body_rate: int = 16 * 1024
    #: Connections one client address may hold at once.
    max_connections_per_source: int = 1024

    def __post_init__(self) -> None:
        for name in ("head_timeout_s", "body_idle_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("min_body_rate", "max_connections_per_source"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of :class:`ServerLimits`.

    One timer per connection while it waits for a head or reads a body (none while the
    application serves): it checks progress every quarter of the bound."""

    limits: ClassVar[ServerLimits]
    per_source: ClassVar[dict[str, int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard: asyncio.TimerHandle | None = None
        self._phase = "head"  # head, body, serving
        self._phase_at = 0.0
        self._received = 0  # body bytes of the request being read
        self._seen = 0
        self._seen_at = 0.0
        self._source: str | None = None

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        source = self.client[0] if self.client else None
        if source is not None:
            held = self.per_source.get(source, 0)
            if held >= self.limits.max_connections_per_source:
                self._answer_and_close(
                    429,
                    "too_many_connections",
                    f"this address already holds {self.limits.max_connections_per_source} "
                    "connections; reuse one or retry after a while",
                )
                return
            self.per_source[source] = held + 1
            self._source = source
        self._enter("head")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._source is not None:
            held = self.per_source.get(self._source, 0) - 1
            if held > 0:
                self.per_source[self._source] = held
            else:
                self.per_source.pop(self._source, None)
            self._source = None
        self._cancel_guard()
        super().connection_lost(exc)

    # -- the phases of a request ---------------------------------------------------------------

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.transport.is_closing():
            return
        if self.pipeline:  # queued behind a request being served: not read until its turn
            self._enter("serving")
            return
        self._received = 0
        self._enter("body")

    def on_body(self, body: bytes) -> None:
        self._received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._enter("serving")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._enter("head")

    # -- the guard -----------------------------------------------------------------------------

    def _enter(self, phase: str) -> None:
        self._cancel_guard()
        self._phase = phase
        if phase == "serving":
            return
        now = self.loop.time()
        self._phase_at = self._seen_at = now
        self._seen = self._received
        bound = self.limits.head_timeout_s if phase == "head" else self.limits.body_idle_s
        self._guard = self.loop.call_later(bound / 4, self._check)

    def _cancel_guard(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _check(self) -> None:
        self._guard = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        limits = self.limits
        if self._phase == "head":
            if now - self._phase_at >= limits.head_timeout_s:
                # An idle keep-alive connection ends here too: not worth an INFO line.
                _event("http.head_timeout", level=logging.DEBUG, client=self._source)
                self.transport.close()  # no request to answer yet
                return
            self._guard = self.loop.call_later(limits.head_timeout_s / 4, self._check)
            return
        if self._phase != "body":
            return
        if self._received != self._seen or self.flow.read_paused:
            # Progress, or our own back-pressure (the application has not read yet).
            self._seen, self._seen_at = self._received, now
        elapsed = now - self._phase_at
        stalled = now - self._seen_at >= limits.body_idle_s
        too_slow = self._received < (elapsed - limits.body_idle_s) * limits.min_body_rate
        if stalled or (too_slow and not self.flow.read_paused):
            _event("http.body_timeout", client=self._source, received=self._received,
                   stalled=stalled)  # fmt: skip
            self._answer_and_close(
                408, "request_timeout", "the request body did not arrive in time"
            )
            return
        self._guard = self.loop.call_later(limits.body_idle_s / 4, self._check)

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        """Answer straight on the transport (the application has not answered) and close:
        the application's read then sees a disconnect."""
        body = json.dumps(
            {"error": {"code": code, "message": message, "retryable": status == 429}},
            separators=(",", ":"),
        ).encode()
        reason = {408: b"Request Timeout", 429: b"Too Many Requests"}[status]
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, reason, len(body), body)
            )
        if cycle is not None and not cycle.response_complete:
            # The application's next read sees a disconnect and its answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def guarded_protocol(limits: ServerLimits | None = None) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol bounded by ``limits``, with its own per-address counts
    (one class per server)."""
    return type(
        "GuardedHttpToolsProtocol",
        (_GuardedProtocol,),
        {"limits": limits or ServerLimits(), "per_source": {}},
    )


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, inheritable: bool = True
) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port) with the options a
    server needs (TCP_NODELAY on accepted connections, a deep backlog); ``OSError`` saying
    which address when it cannot bind.

    With ``reuse_port``, other sockets with ``reuse_port`` (of this user) may bind the same
    port, and the kernel balances connections over them.  ``inheritable``: a process this
    one starts may be handed the socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and accepted sockets inherit it; without it Nagle and delayed ACKs add ~40 ms a request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    if inheritable:
        sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    """``host`` as it stands in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def base_url(host: str, port: int, *, tls: TlsFiles | None = None) -> str:
    """``http(s)://host:port`` of a server listening there (HTTPS with ``tls``)."""
    return f"{'https' if tls is not None else 'http'}://{url_host(host)}:{port}"


def server_config(
    app: Any,
    *,
    log_level: str,
    lifespan: Literal["on", "off"],
    graceful_s: int,
    limit_concurrency: int | None = None,
    tls: TlsFiles | None = None,
    limits: ServerLimits | None = None,
) -> uvicorn.Config:
    """uvicorn's settings for our servers: our logging only, no access log, no Server or
    Date header, keep-alive 30 s, httptools bounded by ``limits`` (slow clients), uvloop when
    installed; HTTPS with ``tls``."""
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        log_level=log_level.lower(),
        http=guarded_protocol(limits),
        loop="auto",  # uvloop when installed, else asyncio
        lifespan=lifespan,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=graceful_s,
        server_header=False,
        date_header=False,
        limit_concurrency=limit_concurrency,
        ssl_certfile=None if tls is None else str(tls.cert),
        ssl_keyfile=None if tls is None else str(tls.key),
    )


class ReadyServer(uvicorn.Server):
    """uvicorn's server that calls ``on_ready`` (a function or a coroutine function) once it
    listens, and exits cleanly when stopped by SIGINT or SIGTERM."""

    on_ready: Callable[[], Awaitable[None] | None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured SIGINT/SIGTERM after its graceful shutdown, so the
        # process would die of the signal; a stop we were asked for is a clean exit.
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            result = self.on_ready()
            if inspect.isawaitable(result):
                await result
