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
limit, owns the buffer, and completes when the last byte lands; limits on how slowly a body
may arrive belong there too.

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
    #: An idle keep-alive connection is closed after this long.
    keep_alive_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_head_bytes", "max_asgi_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ValueError(f"{name} must be an int >= 1024, got {value!r}")
        if not self.keep_alive_s > 0:
            raise ValueError(f"keep_alive_s must be > 0, got {self.keep_alive_s!r}")


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
    """The body could not be read (the connection closed or broke before its end)."""


class BodyReader:
    """The body of one request, read straight into one buffer (the module's body path).

    The handler calls :meth:`read` once it has accepted the request's head; until then the
    connection does not read the body at all.  ``length`` is the ``Content-Length``.
    """

    __slots__ = ("_conn", "_done", "_pos", "_target", "length")

    def __init__(self, conn: _Connection, length: int) -> None:
        self._conn = conn
        self.length = length
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
        buffer = bytearray(self.length)
        self._target = memoryview(buffer)
        self._done = asyncio.get_running_loop().create_future()
        self._conn.begin_body(self)
        await self._done
        return buffer

    # -- the connection's side ---------------------------------------------------------------

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

    # -- asyncio's side --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._lost = asyncio.get_running_loop().create_future()
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _State.CLOSED
        self._server.connections.discard(self)
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
            if self._body.landed(nbytes):
                self._body_complete()
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
        self._body = body
        self._pending_body = 0
        take = min(self._filled, body.length)
        if take:
            body.remaining[:take] = self._buf[:take]
            self._consume(take)
        if body.landed(take):
            self._body_complete()
            return
        self._state = _State.BODY
        assert self._transport is not None
        if self._expects_continue:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._transport.resume_reading()

    def _consume(self, n: int) -> None:
        """Drop the first ``n`` buffered bytes (moved in place: the event loop may still hold
        a view of the buffer, so it is never resized)."""
        rest = self._filled - n
        if rest:
            self._buf[:rest] = self._buf[n : self._filled]
        self._filled = rest

    def _body_complete(self) -> None:
        self._body = None
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

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request that cannot be parsed or served, and close."""
        self._keep_alive = False
        self._pending_body = 0
        doc = {"error": {"code": code, "message": message, "retryable": False}}
        body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        self._write(LeanResponse(status, {"content-type": "application/json"}, body))
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
