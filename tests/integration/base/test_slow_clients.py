"""Slow clients against the uvicorn servers (KeyService, instance host): sealserve._serving.

A real uvicorn server with the guarded protocol on a real socket, with short bounds: a head
or a body that stalls is cut off while other clients are served, a body that trickles below
the minimum rate is cut off, and one address holds a bounded number of connections.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sealserve._serving import ReadyServer, ServerLimits, bind_listener, server_config

pytestmark = pytest.mark.integration


async def echo(request: Request) -> Response:
    return Response(b"echo:" + await request.body())


@contextlib.contextmanager
def serve(limits: ServerLimits) -> Iterator[tuple[str, int]]:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    sock = bind_listener("127.0.0.1", 0)
    uv = ReadyServer(
        server_config(app, log_level="warning", lifespan="off", graceful_s=1, limits=limits)
    )
    ready = threading.Event()
    uv.on_ready = ready.set
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield sock.getsockname()[:2]
    finally:
        uv.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    limits = ServerLimits(head_timeout_s=0.4, body_idle_s=0.4, min_body_rate=100)
    with serve(limits) as address:
        yield address


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=60)


def until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def head(length: int) -> bytes:
    return f"POST /echo HTTP/1.1\r\nhost: s\r\ncontent-length: {length}\r\n\r\n".encode()


def test_stalled_heads_and_bodies_are_cut_off_while_others_are_served(
    server: tuple[str, int],
) -> None:
    stalled_head = connect(server)
    stalled_head.sendall(b"POST /echo HTTP/1.1\r\nhost: s\r\n")  # and never the rest
    stalled_body = connect(server)
    stalled_body.sendall(head(64 << 20) + b"x" * 10)
    with httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=30) as client:
        for i in range(3):
            assert client.post("/echo", content=b"%d" % i).content == b"echo:%d" % i
    assert until_eof(stalled_head) == b""  # no request to answer: just closed
    out = until_eof(stalled_body)
    assert out.startswith(b"HTTP/1.1 408 "), out[:80]
    assert b'"code":"request_timeout"' in out
    stalled_head.close()
    stalled_body.close()


def test_a_body_trickling_below_the_minimum_rate_is_cut_off(server: tuple[str, int]) -> None:
    sock = connect(server)
    sock.sendall(head(100))
    sent = 0
    sock.settimeout(0.05)
    out = b""
    # 1 byte each 50 ms: never a stall of 0.4 s, but 20 bytes/s, below the 100 asked for.
    while sent < 100:
        try:
            sock.sendall(b"y")
        except OSError:  # the server closed it
            break
        sent += 1
        try:
            out = sock.recv(65536)
        except TimeoutError:
            continue
        break
    sock.settimeout(60)
    out += until_eof(sock)
    assert sent < 100
    assert out.startswith(b"HTTP/1.1 408 "), out[:80]
    sock.close()


def test_one_address_holds_a_bounded_number_of_connections() -> None:
    with serve(ServerLimits(max_connections_per_source=6)) as server:
        held_then_released(server)


def held_then_released(server: tuple[str, int]) -> None:
    held = [connect(server) for _ in range(6)]  # idle: within the 30 s allowed for a head
    try:
        with httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=30) as client:
            refused = client.post("/echo", content=b"x")
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_connections"
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, the address is served again (the server counts them down).
    with httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=30) as client:
        response = client.post("/echo", content=b"x")
        while response.status_code == 429:  # until the server has seen the closes
            response = client.post("/echo", content=b"x")
        assert response.content == b"echo:x"
