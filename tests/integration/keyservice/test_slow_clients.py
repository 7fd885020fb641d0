"""Slowloris against a real KeyService process (issue 10.3).

A client that sends the head of a release and a few bytes of its body, then stalls, used to
hold its connection for ever; now it is answered 408 and cut off after the body bound
(``ServerLimits.body_idle_s``, 10 s), and other clients are served meanwhile.
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attest.tee import SimulatedPlatform
from sealserve.protocol import wire
from tests.integration.keyservice.conftest import KeyServiceProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def keyservice(platform: SimulatedPlatform, tmp_path: Path) -> Iterator[KeyServiceProcess]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = f"sqlite+pysqlite:///{tmp_path / 'keyservice.db'}"
    service = KeyServiceProcess(platform, data_dir=data_dir, db_url=db).start()
    try:
        yield service
    finally:
        service.stop()


def test_a_stalled_release_is_cut_off_while_others_are_served(
    keyservice: KeyServiceProcess,
) -> None:
    url = urllib.parse.urlsplit(keyservice.url)
    assert url.hostname is not None
    assert url.port is not None
    stalled = [socket.create_connection((url.hostname, url.port), timeout=60) for _ in range(8)]
    for sock in stalled:
        sock.sendall(
            f"POST {wire.API_PREFIX}/releases HTTP/1.1\r\nhost: ks\r\n"
            "content-type: application/json\r\ncontent-length: 100000\r\n\r\n".encode()
            + b"{" * 10
        )
    with keyservice.http() as client:  # served while the stalled ones wait
        for _ in range(3):
            assert client.post(f"{wire.API_PREFIX}/challenges").status_code == 201
    for sock in stalled:
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
        assert out.startswith(b"HTTP/1.1 408 "), bytes(out[:80])
        sock.close()
    log = keyservice.stderr_path.read_text()
    assert "http.body_timeout" in log
    assert "Traceback" not in log
