"""The gateway's HTTP/1.1 server: a lean path for inference, ASGI for everything else.

A sealed request is a few headers and a body of hundreds of KB that the gateway only forwards.
A general-purpose server and framework (uvicorn, Starlette) cost a third of the gateway's CPU
per request on that path alone: the body arrives as a stream of ``bytes`` chunks, goes through
ASGI messages and middleware, and is joined again.  This server parses the request head with
httptools (the parser uvicorn uses) and then reads the body with ``recv_into`` straight into
one buffer of exactly ``Content-Length`` bytes (:class:`asyncio.BufferedProtocol`: the event
loop writes into the buffer this protocol hands it, no intermediate copy), and calls the
gateway's handler with it.  Every other route goes to the ASGI application (Starlette) through
a small bridge: those are small, rare requests.

::

    server = HttpServer(app=gateway.app, routes=gateway.lean_routes())
    await server.start(sock)           # a bound, listening socket
    ...
    await server.stop(graceful_s=30)   # stop accepting, let requests finish, close

**The body read path** is one place: :class:`BodyReader`.  It checks the length against the
limit, owns the buffer, and completes when the last byte lands.  What a slow or stalled client
can hold is bounded there (:class:`HttpLimits`): the buffer starts at ``body_chunk_bytes`` and
grows (doubling) only as bytes arrive, so a declared ``Content-Length`` costs nothing until it
is sent; the body buffers of all connections together stay under
``max_body_bytes_in_flight`` (a body that would pass it is answered 503, retryable); a body
must keep arriving (no wait longer than ``body_idle_s`` for its next byte, and on average
``min_body_rate`` bytes/s after that first wait) or it is answered 408 and the connection
closed, so a stalled request gives its slot back.  One client address may hold at most
``max_connections_per_source`` connections (more are answered 429 and closed).

What it speaks: HTTP/1.1 and 1.0 with keep-alive (``Connection: close`` honoured), one request
at a time per connection (no pipelining in parallel: reading pauses while a request is served;
pipelined requests are served in order), bodies with a ``Content-Length`` only (a chunked body
is refused with 411: the gateway's API needs the length up front), ``Expect: 100-continue``.
Idle keep-alive connections are closed after ``keep_alive_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any, Final, Protocol, cast

import httptools

from sealserve._log import get_logger

__all__ = [
    "BodyReader",
    "HttpLimits",
    "HttpServer",
    "LeanResponse",
    "LeanRoute",
    "RequestHead",
]

_log = get_logger(__name__)
_HEAD_END: Final = b"\r\n\r\n"
_REASONS: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


@dataclasses.dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """Bounds on what one connection may make the server hold."""

    #: Largest request head (request line and headers).
    max_head_bytes: int = 64 * 1024
    #: Largest body of a request that goes to the ASGI application.
    max_asgi_body_bytes: int = 1 << 20
    #: An idle keep-alive connection is closed after this long; a request head must be
    #: complete within it.
    keep_alive_s: float = 30.0
    #: The longest wait for the next byte of a body (408 and close after it).
    body_idle_s: float = 10.0
    #: After its first ``body_idle_s``, a body must arrive at least this fast on average
    #: (bytes/s): it has ``body_idle_s + length / min_body_rate`` seconds in all.
    min_body_rate: int = 16 * 1024
    #: What a body's buffer starts with; it doubles as bytes arrive, up to the length.
    body_chunk_bytes: int = 1 << 20
    #: Body buffers held at once over all connections (a body that would pass it gets 503).
    max_body_bytes_in_flight: int = 1 << 30
    #: Connections one client address may hold at once (more are answered 429 and closed).
    max_connections_per_source: int = 512

    def __post_init__(self) -> None:
        for name in (
            "max_head_bytes",
            "max_asgi_body_bytes",
            "body_chunk_bytes",
            "max_body_bytes_in_flight",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ValueError(f"{name} must be an int >= 1024, got {value!r}")
        for name in ("max_connections_per_source", "min_body_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("keep_alive_s", "body_idle_s"):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and headers (names lower-case; the first of repeated ones)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    http_version: str
    raw_headers: tuple[tuple[bytes, bytes], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class LeanResponse:
    """What a lean handler answers; ``body`` is written as it is (no copy of our own)."""

    status: int
    headers: Mapping[str, str]
    body: bytes | bytearray | memoryview = b""


class LeanHandler(Protocol):
    def __call__(
        self, head: RequestHead, params: Mapping[str, str], body: BodyReader
    ) -> Awaitable[LeanResponse]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class LeanRoute:
    """A route served without ASGI: ``method``, a compiled ``pattern`` whose named groups
    become ``params``, and the handler."""

    method: str
    pattern: re.Pattern[str]
    handler: LeanHandler


class BodyError(Exception):
    """The body could not be read (the connection closed or broke before its end, or the
    body did not arrive in time)."""


class BodyReader:
    """The body of one request, read straight into one buffer (the module's body path).

    The handler calls :meth:`read` once it has accepted the request's head; until then the
    connection does not read the body at all.  ``length`` is the ``Content-Length``.
    """

    __slots__ = ("_buffer", "_conn", "_done", "_pos", "_target", "length")

    def __init__(self, conn: _Connection, length: int) -> None:
        self._conn = conn
        self.length = length
        self._buffer: bytearray | None = None
        self._target: memoryview | None = None
        self._pos = 0
        self._done: asyncio.Future[None] | None = None

    async def read(self, *, limit: int) -> bytearray:
        """The whole body (``ValueError`` if ``length`` is over ``limit``; :class:`BodyError`
        if the client goes away first)."""
        if self.length > limit:
            raise ValueError(f"the body is {self.length} bytes; the limit is {limit}")
        if self._target is not None:
            raise RuntimeError("the body was read already")
        self._done = asyncio.get_running_loop().create_future()
        self._conn.begin_body(self)
        await self._done
        assert self._buffer is not None
        assert len(self._buffer) == self.length
        buffer, self._buffer, self._target = self._buffer, None, None
        return buffer

    # -- the connection's side ---------------------------------------------------------------

    @property
    def position(self) -> int:
        """Bytes received so far."""
        return self._pos

    @property
    def capacity(self) -> int:
        """Bytes of buffer held now."""
        return 0 if self._buffer is None else len(self._buffer)

    def start(self, size: int) -> None:
        """Hold a first buffer of ``size`` bytes (the connection charged them)."""
        self._buffer = bytearray(size)
        self._target = memoryview(self._buffer)

    def grow_to(self, size: int) -> None:
        """A larger buffer (the connection charged the difference), keeping what landed.
        The old one may still be lent to the event loop: it is copied, never resized."""
        assert self._buffer is not None
        assert size > len(self._buffer)
        grown = bytearray(size)
        grown[: self._pos] = self._buffer[: self._pos]
        self._buffer, self._target = grown, memoryview(grown)

    @property
    def remaining(self) -> memoryview:
        assert self._target is not None
        return self._target[self._pos :]

    def landed(self, n: int) -> bool:
        """``n`` more bytes are in the buffer; whether the body is complete."""
        self._pos += n
        if self._pos >= self.length:
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
            return True
        return False

    def fail(self, reason: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(BodyError(reason))


class _State(enum.Enum):
    HEAD = "head"  # reading a request head
    WAIT_BODY = "wait_body"  # head parsed; the handler has not asked for the body yet
    BODY = "body"  # reading the body into the handler's buffer
    SERVING = "serving"  # the request is complete; the handler runs
    CLOSED = "closed"


class _HeadParser:
    """httptools callbacks for one request head."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


class _Connection(asyncio.BufferedProtocol):
    """One client connection (see the module docstring)."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray(self._limits.max_head_bytes)
        self._filled = 0
        self._state = _State.HEAD
        self._body: BodyReader | None = None
        self._pending_body = 0  # Content-Length of the request being served
        self._keep_alive = True
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] | None = None
        self._expects_continue = False
        self._source: str | None = None
        self._charged = 0  # bytes of body buffer counted in the server's in-flight total
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0
        self._seen_pos = 0
        self._seen_at = 0.0

    # -- asyncio's side --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._lost = asyncio.get_running_loop().create_future()
        source = self.client
        if source is not None and not self._server.admit_source(source[0]):
            self._refuse(
                429,
                "too_many_connections",
                f"this address already holds {self._limits.max_connections_per_source} "
                "connections; reuse one or retry after a while",
            )
            return
        self._source = None if source is None else source[0]
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _State.CLOSED
        self._server.connections.discard(self)
        if self._source is not None:
            self._server.release_source(self._source)
            self._source = None
        self._uncharge()
        self._stop_body_timer()
        if self._idle is not None:
            self._idle.cancel()
        if self._body is not None:
            self._body.fail("the client closed the connection before the body ended")
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state is _State.BODY and self._body is not None:
            return self._body.remaining
        view = memoryview(self._buf)[self._filled :]
        if not len(view):  # a head larger than the limit: buffer_updated answers 431
            return memoryview(bytearray(1))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        if self._state is _State.BODY and self._body is not None:
            body = self._body
            if body.landed(nbytes):
                self._body_complete()
            elif body.position >= body.capacity:
                self._grow(body)
            return
        if self._filled >= len(self._buf):
            self._refuse(431, "bad_request", "the request head is over the limit")
            return
        self._filled += nbytes
        if self._state is _State.HEAD:
            self._try_head()

    def eof_received(self) -> bool | None:
        if self._body is not None:
            self._body.fail("the client closed the connection before the body ended")
        return None  # close our side

    # -- heads -----------------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._limits.keep_alive_s, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self._state is _State.HEAD and self._transport is not None:
            self._transport.close()

    def _try_head(self) -> None:
        end = self._buf.find(_HEAD_END, 0, self._filled)
        if end < 0:
            if self._filled >= len(self._buf):
                self._refuse(431, "bad_request", "the request head is over the limit")
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        head_len = end + len(_HEAD_END)
        try:
            head, length = self._parse_head(bytes(self._buf[:head_len]))
        except _LengthRequired:
            self._refuse(411, "length_required", "send the body with a Content-Length")
            return
        except ValueError as exc:
            self._refuse(400, "bad_request", str(exc))
            return
        # What followed the head (the body's first bytes, or a pipelined request) stays.
        self._consume(head_len)
        self._pending_body = length
        self._state = _State.WAIT_BODY
        assert self._transport is not None
        self._transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._serve(head, length))

    def _parse_head(self, raw: bytes) -> tuple[RequestHead, int]:
        callbacks = _HeadParser()
        parser = httptools.HttpRequestParser(callbacks)
        try:
            parser.feed_data(raw)
        except httptools.HttpParserUpgrade:
            raise ValueError("protocol upgrades are not served") from None
        except httptools.HttpParserError:
            raise ValueError("malformed request head") from None
        if not callbacks.complete:
            raise ValueError("malformed request head")
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        url = httptools.parse_url(callbacks.url)
        path = (url.path or b"/").decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        headers: dict[str, str] = {}
        for name, value in callbacks.headers:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        if "transfer-encoding" in headers:
            raise _LengthRequired()
        raw_length = headers.get("content-length", "0")
        if not raw_length.isdigit():
            raise ValueError(f"Content-Length has value {raw_length!r}")
        self._keep_alive = parser.should_keep_alive()
        head = RequestHead(
            method=method,
            path=path,
            query=query,
            headers=headers,
            http_version=version,
            raw_headers=tuple(callbacks.headers),
        )
        return head, int(raw_length)

    # -- bodies ----------------------------------------------------------------------------------

    def begin_body(self, body: BodyReader) -> None:
        """The handler asked for the body: take what already arrived, then read the rest."""
        if self._state is not _State.WAIT_BODY:
            body.fail("the connection is closed")
            return
        take = min(self._filled, body.length)
        first = min(body.length, max(self._limits.body_chunk_bytes, take))
        if not self._charge(first):
            body.fail("the gateway holds too many bytes of request bodies")
            self._refuse_busy()
            return
        body.start(first)
        self._body = body
        self._pending_body = 0
        if take:
            body.remaining[:take] = self._buf[:take]
            self._consume(take)
        if body.landed(take):
            self._body_complete()
            return
        self._state = _State.BODY
        self._start_body_timer(body)
        assert self._transport is not None
        if self._expects_continue:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._transport.resume_reading()

    def _grow(self, body: BodyReader) -> None:
        """The buffer is full and the body is not: double it (charged), or refuse (503)."""
        size = min(body.length, 2 * body.capacity)
        if not self._charge(size - body.capacity):
            body.fail("the gateway holds too many bytes of request bodies")
            self._refuse_busy()
            return
        body.grow_to(size)

    def _charge(self, n: int) -> bool:
        if not self._server.charge_body(n):
            return False
        self._charged += n
        return True

    def _uncharge(self) -> None:
        if self._charged:
            self._server.charge_body(-self._charged)
            self._charged = 0

    def _refuse_busy(self) -> None:
        self._refuse(
            503,
            "overloaded",
            "the gateway holds too many bytes of request bodies; retry after a while",
            retryable=True,
        )

    # -- how slowly a body may arrive -----------------------------------------------------------

    def _start_body_timer(self, body: BodyReader) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        limits = self._limits
        self._body_deadline = now + limits.body_idle_s + body.length / limits.min_body_rate
        self._seen_pos, self._seen_at = body.position, now
        self._body_timer = loop.call_later(limits.body_idle_s / 4, self._check_body)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _check_body(self) -> None:
        """Every quarter of ``body_idle_s`` while a body is read: cut a stalled or too slow
        one (408, close), so it gives back its buffer and its request's slot."""
        self._body_timer = None
        body = self._body
        if self._state is not _State.BODY or body is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if body.position != self._seen_pos:
            self._seen_pos, self._seen_at = body.position, now
        stalled = now - self._seen_at >= self._limits.body_idle_s
        if stalled or now >= self._body_deadline:
            _log.event("http.body_timeout", level=logging.INFO, client=self._source,
                       received=body.position, length=body.length, stalled=stalled)  # fmt: skip
            body.fail("the body did not arrive in time")
            self._refuse(408, "request_timeout", "the request body did not arrive in time")
            return
        self._body_timer = loop.call_later(self._limits.body_idle_s / 4, self._check_body)

    def _consume(self, n: int) -> None:
        """Drop the first ``n`` buffered bytes (moved in place: the event loop may still hold
        a view of the buffer, so it is never resized)."""
        rest = self._filled - n
        if rest:
            self._buf[:rest] = self._buf[n : self._filled]
        self._filled = rest

    def _body_complete(self) -> None:
        self._body = None
        self._stop_body_timer()
        self._state = _State.SERVING
        if self._transport is not None:
            self._transport.pause_reading()

    def _skip_unread_body(self) -> bool:
        """After an answer that did not read the body: whether the connection can go on (a
        body that did not arrive yet would have to be read and dropped; close instead)."""
        pending, self._pending_body = self._pending_body, 0
        if pending == 0:
            return True
        if pending <= self._filled:
            self._consume(pending)
            return True
        return False

    # -- serving ---------------------------------------------------------------------------------

    async def _serve(self, head: RequestHead, length: int) -> None:
        self._expects_continue = head.headers.get("expect", "").lower() == "100-continue"
        try:
            response = await self._server.dispatch(self, head, length)
        except BodyError:
            self._close()
            return
        except Exception as exc:  # a bug in a handler: answer 500, keep the server up
            _log.event("http.handler_failed", level=logging.ERROR, path=head.path,
                       error=type(exc).__name__)  # fmt: skip
            response = LeanResponse(500, {"content-type": "text/plain"}, b"internal error")
            self._keep_alive = False
        self._write(response, head_only=head.method == "HEAD")
        self._finish()

    def _write(self, response: LeanResponse, *, head_only: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self._skip_unread_body():
            self._keep_alive = False
        if self._server.stopping:
            self._keep_alive = False
        reason = _REASONS.get(response.status, b"Unknown")
        lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, reason)]
        has_length = False
        for name, value in response.headers.items():
            lower = name.lower()
            if lower == "content-length":
                has_length = True
            if lower in ("connection", "transfer-encoding"):
                continue
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not has_length:
            lines.append(b"content-length: %d\r\n" % len(response.body))
        if not self._keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if head_only or not len(response.body):
            transport.write(b"".join(lines))
        else:
            transport.writelines([b"".join(lines), response.body])

    def _finish(self) -> None:
        self._task = None
        self._uncharge()  # the handler is done with the body
        transport = self._transport
        if transport is None or self._state is _State.CLOSED:
            return
        if not self._keep_alive:
            self._close()
            return
        self._state = _State.HEAD
        self._expects_continue = False
        self._arm_idle()
        transport.resume_reading()
        if self._filled:  # a pipelined request is already here
            self._try_head()

    def _refuse(self, status: int, code: str, message: str, *, retryable: bool = False) -> None:
        """Answer a request that cannot be parsed or served, and close."""
        self._keep_alive = False
        self._pending_body = 0
        doc = {"error": {"code": code, "message": message, "retryable": retryable}}
        body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        headers = {"content-type": "application/json"}
        if retryable:
            headers["retry-after"] = "1"
        self._write(LeanResponse(status, headers, body))
        self._close()

    def _close(self) -> None:
        self._keep_alive = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def close_when_idle(self) -> None:
        """Server stopping: close now if no request is in progress, else after it."""
        if self._state is _State.HEAD and self._filled == 0:
            self._close()

    async def wait_lost(self) -> None:
        if self._lost is not None:
            await asyncio.shield(self._lost)

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def client(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        peer = self._transport.get_extra_info("peername")
        return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None


class _LengthRequired(ValueError):
    pass


ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class HttpServer:
    """Serves ``routes`` on the lean path and everything else with the ASGI ``app``."""

    def __init__(
        self,
        *,
        app: ASGIApp,
        routes: Iterable[LeanRoute] = (),
        limits: HttpLimits | None = None,
    ) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.limits = limits or HttpLimits()
        self.connections: set[_Connection] = set()
        self.stopping = False
        #: Bytes of body buffers held now, over all connections.
        self.body_bytes = 0
        self._per_source: dict[str, int] = {}
        self._server: asyncio.AbstractServer | None = None
        self._host = ("127.0.0.1", 0)
        self._scheme = "http"

    async def start(self, sock: socket.socket, *, tls: ssl.SSLContext | None = None) -> None:
        """Accept connections on ``sock`` (bound and listening); TLS with a server-side
        ``tls`` context (the event loop's TLS hands the decrypted body to the same buffer)."""
        loop = asyncio.get_running_loop()
        name = sock.getsockname()
        if isinstance(name, tuple):
            self._host = (str(name[0]), int(name[1]))
        self._scheme = "https" if tls is not None else "http"
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, ssl=tls)

    async def stop(self, *, graceful_s: float) -> None:
        """Stop accepting, let requests in progress finish (up to ``graceful_s``), close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + graceful_s
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn._close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    # -- what connections hold together ----------------------------------------------------------

    def admit_source(self, source: str) -> bool:
        """Count one more connection of ``source``, unless it holds the most it may."""
        held = self._per_source.get(source, 0)
        if held >= self.limits.max_connections_per_source:
            return False
        self._per_source[source] = held + 1
        return True

    def release_source(self, source: str) -> None:
        held = self._per_source.get(source, 0) - 1
        if held > 0:
            self._per_source[source] = held
        else:
            self._per_source.pop(source, None)

    def charge_body(self, n: int) -> bool:
        """Add ``n`` bytes (negative: give back) to the body buffers held; ``False`` (and
        nothing added) when that would pass ``max_body_bytes_in_flight``."""
        if n > 0 and self.body_bytes + n > self.limits.max_body_bytes_in_flight:
            return False
        self.body_bytes += n
        return True

    # -- dispatch --------------------------------------------------------------------------------

    async def dispatch(self, conn: _Connection, head: RequestHead, length: int) -> LeanResponse:
        for route in self.routes:
            if head.method != route.method:
                continue
            match = route.pattern.fullmatch(head.path)
            if match is not None:
                return await route.handler(head, match.groupdict(), BodyReader(conn, length))
        return await self._asgi(conn, head, length)

    async def _asgi(self, conn: _Connection, head: RequestHead, length: int) -> LeanResponse:
        if length:
            try:
                body: bytes | bytearray = await BodyReader(conn, length).read(
                    limit=self.limits.max_asgi_body_bytes
                )
            except ValueError as exc:
                return LeanResponse(413, {"content-type": "text/plain"}, str(exc).encode())
        else:
            body = b""
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.http_version,
            "method": head.method,
            "scheme": self._scheme,
            "path": head.path,
            "raw_path": head.path.encode("latin-1"),
            "query_string": head.query.encode("latin-1"),
            "root_path": "",
            "headers": list(head.raw_headers),
            "client": conn.client,
            "server": self._host,
        }
        sent_body = False
        status = 500
        headers: dict[str, str] = {}
        chunks: list[bytes] = []
        finished = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            await conn.wait_lost()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    headers[name.decode("latin-1")] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False) and not finished.done():
                    finished.set_result(None)

        await self.app(scope, receive, send)
        if not finished.done():
            return LeanResponse(500, {"content-type": "text/plain"}, b"internal error")
        headers.pop("content-length", None)
        return LeanResponse(status, headers, b"".join(chunks))
