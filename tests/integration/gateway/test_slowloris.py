"""Issue 10.3 against a real gateway server on a real socket: slow clients (slowloris).

The attack: connections that send a request head and a few body bytes, then stall, each
holding one of ``max_queued`` request slots (and, before the fix, a buffer of the declared
``Content-Length``).  Every real request got 429 while ``/healthz`` said 200.  Now health says
the gateway is saturated, the stalled requests are answered 408 and cut off after
``body_timeout_s``, their slots and buffers come back, and real requests are served again.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from sealserve.config import GatewaySettings
from sealserve.gateway import Gateway, GatewayOptions, GatewayServer
from tests.unit.gateway.test_app import PATH, FakePlatform, Models, good_headers

pytestmark = pytest.mark.integration

SLOTS = 8
DECLARED = 64 << 20


@pytest.fixture
def gateway() -> Iterator[GatewayServer]:
    settings = GatewaySettings(max_queued=SLOTS, body_timeout_s=0.5)
    server = GatewayServer(
        Gateway(FakePlatform(), Models(), options=GatewayOptions.from_settings(settings)),
        host="127.0.0.1",
        port=0,
    )
    with server:
        yield server


def stall(server: GatewayServer) -> socket.socket:
    """A slowloris connection: a head declaring 64 MiB, ten bytes of body, then nothing."""
    sock = socket.create_connection((server.host, server.port), timeout=60)
    head = (
        f"POST {PATH} HTTP/1.1\r\nhost: gw\r\ncontent-length: {DECLARED}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in good_headers().items())
        + "\r\n"
    )
    sock.sendall(head.encode() + b"x" * 10)
    return sock


def answer_and_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def test_stalled_bodies_are_cut_off_and_real_requests_are_served_again(
    gateway: GatewayServer,
) -> None:
    url = gateway.url
    with httpx.Client(base_url=url, timeout=30) as client:
        stalled = [stall(gateway) for _ in range(SLOTS)]
        try:
            # The attack holds every slot: real requests are refused, and health says so.
            health = client.get("/healthz")
            while health.status_code == 200:  # until the gateway has read all the heads
                health = client.get("/healthz")
            assert health.json() == {"status": "saturated", "held": SLOTS, "max_queued": SLOTS}
            refused = client.post(PATH, content=b"sealed", headers=good_headers())
            assert refused.status_code == 429
            # Buffers follow the bytes that came, not the 8 x 64 MiB declared.
            assert gateway._http.body_bytes <= SLOTS * (1 << 20)
            # Each stalled request is answered 408 and its connection closed.
            for sock in stalled:
                out = answer_and_eof(sock)
                assert out.startswith(b"HTTP/1.1 408 "), out[:80]
                assert b'"code":"request_timeout"' in out
        finally:
            for sock in stalled:
                sock.close()
        served = client.post(PATH, content=b"sealed", headers=good_headers())
        assert served.status_code == 200
        assert served.content == b"sealed-output:sealed"
        assert client.get("/healthz").json() == {"status": "ok"}
        assert gateway._http.body_bytes == 0
