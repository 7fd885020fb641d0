"""The handshake's framing over a socketpair (real segments are in tests/integration/ipc)."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from sealserve.errors import ChannelClosed, SegmentError
from sealserve.ipc._handshake import (
    PROTOCOL_VERSION,
    PUBLISH,
    SUBSCRIBE,
    Entry,
    receive_answer,
    receive_offer,
    send_answer,
    send_offer,
)


def test_an_offer_and_its_answer_round_trip_with_descriptors() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        entries = [
            Entry(SUBSCRIBE, 3, "host.request", 1 << 20),
            Entry(PUBLISH, 255, "h.resp", None),
        ]
        send_offer(a, entries, [r, w])
        offer = receive_offer(b)
        assert offer.entries == entries
        assert offer.pid == os.getpid()
        assert offer.version == PROTOCOL_VERSION
        assert len(offer.fds) == 2
        for fd in offer.fds:
            assert os.fstat(fd).st_ino in (os.fstat(r).st_ino, os.fstat(w).st_ino)
            os.close(fd)
        send_answer(b, status=1, reason="no thanks")
        answer = receive_answer(a)
        assert (answer.status, answer.reason) == (1, "no thanks")
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_a_peer_that_is_not_sealserve_is_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        body = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
        a.sendall(struct.pack("<I", len(body)) + body)
        with pytest.raises(SegmentError, match="not a sealserve ipc endpoint"):
            receive_answer(b)


def test_another_handshake_version_is_refused() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    with a, b:
        body = struct.pack("<8sIII", b"SEALHSK1", PROTOCOL_VERSION + 1, 1, 1)
        socket.send_fds(a, [struct.pack("<I", len(body)) + body], [r])
        with pytest.raises(SegmentError, match="handshake version 2"):
            receive_offer(b)
    os.close(r)
    os.close(w)


def test_a_peer_that_hangs_up_mid_handshake_is_closed() -> None:
    a, b = socket.socketpair()
    a.close()
    with b, pytest.raises(ChannelClosed, match="closed the socket"):
        receive_answer(b)


def test_mismatched_counts_are_refused_before_sending() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError, match="one descriptor per entry"):
        send_offer(a, [Entry(SUBSCRIBE, 0, "x", None)], [])
