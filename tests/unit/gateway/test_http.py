"""The gateway's own HTTP/1.1 server, over in-memory connections: the lean route's body path,
keep-alive and pipelining, what it refuses, and the ASGI bridge for the other routes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sealserve.gateway._http import (
    BodyError,
    BodyReader,
    HttpLimits,
    HttpServer,
    LeanResponse,
    LeanRoute,
    RequestHead,
)
from tests.unit.gateway.lean import MemoryTransport, parse_responses

LIMIT = 1000


class Echo:
    """A lean route: refuses ``x-refuse`` requests without reading the body, else answers
    with what it read (and records it)."""

    def __init__(self) -> None:
        self.bodies: list[bytearray] = []
        self.heads: list[RequestHead] = []
        self.errors: list[BaseException] = []
        self.gate: asyncio.Event | None = None
        self.limit = LIMIT

    async def __call__(
        self, head: RequestHead, params: Mapping[str, str], body: BodyReader
    ) -> LeanResponse:
        self.heads.append(head)
        if "x-refuse" in head.headers:
            return LeanResponse(403, {"content-type": "text/plain"}, b"refused")
        try:
            data = await body.read(limit=self.limit)
        except ValueError:
            return LeanResponse(413, {}, b"too large")
        except BodyError as exc:
            self.errors.append(exc)
            raise
        self.bodies.append(data)
        if self.gate is not None:
            await self.gate.wait()
        return LeanResponse(200, {"x-name": params["name"]}, b"echo:" + data)


async def _asgi_app_calls(request: Request) -> Response:
    return JSONResponse(
        {
            "path": request.url.path,
            "query": request.url.query,
            "body": (await request.body()).decode(),
        }
    )


ASGI = Starlette(
    routes=[
        Route("/info", _asgi_app_calls, methods=["GET", "POST"]),
    ]
)


def server(echo: Echo, **limits: Any) -> HttpServer:
    route = LeanRoute("POST", re.compile(r"/echo/(?P<name>[a-z]+)"), echo)
    return HttpServer(app=ASGI, routes=[route], limits=HttpLimits(**limits))


def request(path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: gw", f"content-length: {len(body)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def drive(body: Callable[[Echo, HttpServer], Awaitable[None]], **limits: Any) -> None:
    echo = Echo()
    asyncio.run(body(echo, server(echo, **limits)))


def test_the_body_lands_in_one_buffer_of_its_exact_length_whatever_the_pieces() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        for piece in (1, 7, 4096):
            conn = MemoryTransport(srv, piece=piece)
            payload = bytes(range(256)) * 3
            conn.feed(request("/echo/abc", payload))
            await conn.run_until_quiet()
            ((status, headers, out),) = parse_responses(bytes(conn.written))
            assert status == 200
            assert out == b"echo:" + payload
            assert headers["x-name"] == "abc"
            assert type(echo.bodies[-1]) is bytearray
            assert len(echo.bodies[-1]) == len(payload)

    drive(body)


def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv, piece=50)
        conn.feed(request("/echo/one", b"first") + request("/echo/two", b"second!"))
        await conn.run_until_quiet()
        conn.feed(request("/echo/three", b"3"))
        await conn.run_until_quiet()
        answers = parse_responses(bytes(conn.written))
        assert [(s, b) for s, _, b in answers] == [
            (200, b"echo:first"), (200, b"echo:second!"), (200, b"echo:3")
        ]  # fmt: skip
        assert not conn.closed
        assert all("connection" not in h for _, h, _ in answers)

    drive(body)


def test_a_request_is_not_read_past_its_body_while_it_is_served() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        echo.gate = asyncio.Event()
        conn = MemoryTransport(srv)
        conn.feed(request("/echo/one", b"a") + request("/echo/two", b"b"))
        await conn.run_until_quiet(rounds=20)
        assert len(echo.bodies) == 1
        assert conn.paused
        echo.gate.set()
        await conn.run_until_quiet()
        assert [b for _, _, b in parse_responses(bytes(conn.written))] == [b"echo:a", b"echo:b"]

    drive(body)


def test_an_answer_that_did_not_read_the_body_keeps_the_connection_only_if_it_all_came() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv)
        conn.feed(request("/echo/a", b"0123456789", x_refuse="1") + request("/echo/b", b"ok"))
        await conn.run_until_quiet()
        answers = parse_responses(bytes(conn.written))
        assert [(s, b) for s, _, b in answers] == [(403, b"refused"), (200, b"echo:ok")]
        assert not conn.closed

        partial = MemoryTransport(srv)  # the body is not all there: the connection closes
        partial.feed(request("/echo/a", b"0123456789", x_refuse="1")[:-4])
        await partial.run_until_quiet()
        ((status, headers, _),) = parse_responses(bytes(partial.written))
        assert status == 403
        assert headers["connection"] == "close"
        assert partial.closed

    drive(body)


def test_expect_100_continue_is_answered_only_when_the_body_is_wanted() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv)
        head = request("/echo/a", b"", expect="100-continue").replace(
            b"content-length: 0", b"content-length: 4"
        )
        conn.feed(head)
        await conn.run_until_quiet()
        assert bytes(conn.written) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.feed(b"body")
        await conn.run_until_quiet()
        assert parse_responses(bytes(conn.written))[-1][2] == b"echo:body"

        refused = MemoryTransport(srv)
        refused.feed(head.replace(b"\r\n\r\n", b"\r\nx-refuse: 1\r\n\r\n"))
        await refused.run_until_quiet()
        assert b"100 Continue" not in refused.written
        assert parse_responses(bytes(refused.written))[0][0] == 403

    drive(body)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"POST /echo/a HTTP/1.1\r\ncontent-length: x1\r\n\r\n", 400, "bad_request"),
        (b"POST /echo/a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 411,
         "length_required"),
        (b"GET / HTTP/1.1\r\n" + b"x-pad: " + b"p" * 3000 + b"\r\n\r\n", 431, "bad_request"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_is_answered_and_the_connection_closed(
    raw: bytes, status: int, code: str
) -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv, piece=512)
        conn.feed(raw)
        await conn.run_until_quiet()
        ((got, headers, out),) = parse_responses(bytes(conn.written))
        assert (got, headers["connection"]) == (status, "close")
        assert f'"code":"{code}"'.encode() in out
        assert conn.closed
        assert not echo.bodies

    drive(body, max_head_bytes=2048)


def test_a_body_over_the_handlers_limit_is_not_read() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv)
        conn.feed(request("/echo/a", b"x" * (LIMIT + 1)))
        await conn.run_until_quiet()
        assert parse_responses(bytes(conn.written))[0][0] == 413
        assert not echo.bodies

    drive(body)


def test_a_client_that_hangs_up_mid_body_gets_nothing_and_the_handler_sees_it() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv)
        conn.feed(request("/echo/a", b"x" * 500)[:-200])
        await conn.run_until_quiet()
        conn.hang_up()
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(echo.errors) == 1
        assert isinstance(echo.errors[0], BodyError)
        assert not echo.bodies
        assert not conn.written

    drive(body)


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        for raw in (
            request("/echo/a", b"1").replace(b"HTTP/1.1", b"HTTP/1.0"),
            request("/echo/a", b"1", connection="close"),
        ):
            conn = MemoryTransport(srv)
            conn.feed(raw)
            await conn.run_until_quiet()
            ((status, headers, _),) = parse_responses(bytes(conn.written))
            assert status == 200
            assert headers["connection"] == "close"
            assert conn.closed

    drive(body)


def test_other_routes_go_to_the_asgi_application_with_their_body_and_query() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv)
        conn.feed(request("/info?a=1&b=2", b"hello"))
        conn.feed(b"GET /nowhere HTTP/1.1\r\nhost: gw\r\n\r\n")
        await conn.run_until_quiet()
        (status, _, out), (missing, _, _) = parse_responses(bytes(conn.written))
        assert status == 200
        assert out == b'{"path":"/info","query":"a=1&b=2","body":"hello"}'
        assert missing == 404
        assert not echo.heads  # the lean route never saw them

    drive(body)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_head_bytes"):
        HttpLimits(max_head_bytes=10)
    with pytest.raises(ValueError, match="keep_alive_s"):
        HttpLimits(keep_alive_s=0)
    with pytest.raises(ValueError, match="body_idle_s"):
        HttpLimits(body_idle_s=float("inf"))
    with pytest.raises(ValueError, match="max_connections_per_source"):
        HttpLimits(max_connections_per_source=0)


# -- slow clients (slowloris, issue 10.3) -------------------------------------------------------


async def _until_closed(conn: MemoryTransport) -> None:
    """Let the server's timers run until it closes ``conn`` (bounded by the test's timeout:
    a server that never cuts the connection fails the test)."""
    while not conn.closed:
        await asyncio.sleep(0.01)


def test_a_stalled_body_is_cut_off_while_other_clients_are_served() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        slow = MemoryTransport(srv)
        slow.feed(request("/echo/slow", b"x" * 500)[:-490])  # the head and 10 bytes, then nothing
        await slow.run_until_quiet()
        assert slow.protocol.busy  # it holds its request
        for i in range(3):  # others are served meanwhile
            fast = MemoryTransport(srv)
            fast.feed(request("/echo/fast", b"%d" % i))
            await fast.run_until_quiet()
            ((status, _, out),) = parse_responses(bytes(fast.written))
            assert (status, out) == (200, b"echo:%d" % i)
        await _until_closed(slow)
        ((status, headers, out),) = parse_responses(bytes(slow.written))
        assert (status, headers["connection"]) == (408, "close")
        assert b'"code":"request_timeout"' in out
        assert len(echo.errors) == 1
        assert isinstance(echo.errors[0], BodyError)
        assert srv.body_bytes == 0  # its buffer was given back

    drive(body, body_idle_s=0.1)


def test_a_trickling_body_is_cut_off_at_the_minimum_rate() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        conn = MemoryTransport(srv)
        payload = b"y" * 50
        conn.feed(request("/echo/t", payload)[: -len(payload)])
        await conn.run_until_quiet()
        # One byte every 20 ms (50 bytes/s) never stalls for body_idle_s, but stays below the
        # 100 bytes/s asked for: the body has 0.1 + 50 / 100 s in all, and needs at least 1 s.
        sent = 0
        while not conn.closed:
            if sent < len(payload):
                conn.feed(payload[sent : sent + 1])
                sent += 1
                conn.pump()
            await asyncio.sleep(0.02)
        assert sent < len(payload)
        ((status, _, _),) = parse_responses(bytes(conn.written))
        assert status == 408
        assert not echo.bodies

    drive(body, body_idle_s=0.1, min_body_rate=100)


def test_a_declared_length_costs_memory_only_as_bytes_arrive() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        echo.limit = 64 << 20
        conn = MemoryTransport(srv)
        head = request("/echo/big", b"")
        head = head.replace(b"content-length: 0", b"content-length: %d" % (64 << 20))
        conn.feed(head + b"z" * 10)
        await conn.run_until_quiet()
        assert srv.body_bytes == 4096  # the first chunk, not the declared 64 MiB
        conn.feed(b"z" * 5000)
        await conn.run_until_quiet()
        assert srv.body_bytes == 8192  # doubled as the bytes came: 4 KiB, 8 KiB
        conn.hang_up()
        assert srv.body_bytes == 0

    drive(body, body_chunk_bytes=4096)


def test_bodies_in_flight_are_bounded_over_all_connections() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        echo.limit = 1 << 20
        first = MemoryTransport(srv)
        first.feed(request("/echo/a", b"a" * (1 << 20))[: -(1 << 20)])
        await first.run_until_quiet()
        first.feed(b"a" * 5000)
        await first.run_until_quiet()
        assert srv.body_bytes == 8192  # 1 KiB doubled to 8 KiB for 5,000 bytes: the budget
        second = MemoryTransport(srv)
        second.feed(request("/echo/b", b"b" * 100))
        await second.run_until_quiet()
        ((status, headers, out),) = parse_responses(bytes(second.written))
        assert (status, headers["retry-after"]) == (503, "1")
        assert b'"retryable":true' in out
        assert second.closed
        first.hang_up()
        third = MemoryTransport(srv)
        third.feed(request("/echo/c", b"c" * 100))
        await third.run_until_quiet()
        assert parse_responses(bytes(third.written))[0][:3:2] == (200, b"echo:" + b"c" * 100)

    drive(body, body_chunk_bytes=1024, max_body_bytes_in_flight=8192)


def test_one_address_holds_at_most_its_share_of_connections() -> None:
    async def body(echo: Echo, srv: HttpServer) -> None:
        held = [MemoryTransport(srv) for _ in range(2)]  # all from 127.0.0.1
        refused = MemoryTransport(srv)
        ((status, headers, out),) = parse_responses(bytes(refused.written))
        assert (status, headers["connection"]) == (429, "close")
        assert b'"code":"too_many_connections"' in out
        assert refused.closed
        held[0].close()
        again = MemoryTransport(srv)
        again.feed(request("/echo/a", b"ok"))
        await again.run_until_quiet()
        assert parse_responses(bytes(again.written))[0][0] == 200

    drive(body, max_connections_per_source=2)
