"""The gateway's own HTTP server (:mod:`sealserve.gateway._http`) in memory, for unit tests.

:class:`MemoryTransport` plays the event loop's side of one connection: it feeds bytes to the
protocol through ``get_buffer``/``buffer_updated`` (in pieces of a chosen size, as a socket
would), honours ``pause_reading``, and collects what the server writes.
:class:`LeanClientTransport` is an ``httpx`` transport that sends each request over a fresh
connection of that kind, so the gateway's tests run unchanged against both servers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import httpx

from sealserve.gateway._http import HttpServer, _Connection


class MemoryTransport:
    """The transport side of one in-memory connection (see the module docstring)."""

    def __init__(self, server: HttpServer, *, piece: int = 65536) -> None:
        self.protocol = _Connection(server)
        self.piece = piece
        self.written = bytearray()
        self.paused = False
        self.closed = False
        self._incoming = bytearray()
        self._resumed = asyncio.Event()
        self.protocol.connection_made(self)  # type: ignore[arg-type]

    # -- what the protocol calls ---------------------------------------------------------------

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self._resumed.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    # -- the client's side ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue bytes from the client; :meth:`pump` delivers them while reading is on."""
        self._incoming += data

    def pump(self) -> None:
        while self._incoming and not self.paused and not self.closed:
            buf = self.protocol.get_buffer(-1)
            n = min(len(buf), len(self._incoming), self.piece)
            buf[:n] = self._incoming[:n]
            del self._incoming[:n]
            self.protocol.buffer_updated(n)

    async def run_until_quiet(self, rounds: int = 200) -> None:
        """Deliver what was fed, letting the server's tasks run, until nothing moves."""
        for _ in range(rounds):
            self.pump()
            await asyncio.sleep(0)
            if self.closed or (not self._incoming and not self.protocol.busy):
                await asyncio.sleep(0)
                if not self.protocol.busy:
                    return

    def hang_up(self) -> None:
        """The client closes its side."""
        self.protocol.eof_received()
        self.close()


class _Responses:
    """httptools callbacks collecting every response of a stream."""

    def __init__(self) -> None:
        self.parser: Any = None
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._status = 0

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        if self._status != 100:  # an interim answer: the real one follows
            self.done.append((self._status, self._headers, bytes(self._body)))


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The complete responses in ``data`` (status, headers lower-case, body), in order."""
    callbacks = _Responses()
    parser = httptools.HttpResponseParser(callbacks)
    callbacks.parser = parser
    parser.feed_data(data)
    return callbacks.done


def encode_request(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    for name, value in request.headers.multi_items():
        lines.append(f"{name}: {value}")
    if request.headers.get("transfer-encoding") == "chunked":
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class LeanClientTransport(httpx.AsyncBaseTransport):
    """Sends each request over a fresh in-memory connection to ``server``."""

    def __init__(self, server: HttpServer, *, piece: int = 65536) -> None:
        self.server = server
        self.piece = piece

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        conn = MemoryTransport(self.server, piece=self.piece)
        conn.feed(encode_request(request, body))
        while True:
            await conn.run_until_quiet()
            if conn.written and not conn.protocol.busy:
                break
            await asyncio.sleep(0)
        status, headers, content = parse_responses(bytes(conn.written))[0]
        conn.close()
        return httpx.Response(status, headers=headers, content=content, request=request)
