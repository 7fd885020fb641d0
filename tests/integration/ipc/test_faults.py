"""Faults with real processes and real segments: each ends in a clear error, nothing leaks.

A child process holds one end of a connection over a socketpair and is SIGKILLed at a chosen
moment (holding samples, mid-loan, mid-stream); the parent must get :class:`PeerDied`, not a
hang, with the dead side's slots reclaimed.  Segments that are of another version, corrupt,
unsealed or not segments at all are refused by the opener, which tells the creator why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sealserve.errors import BackpressureTimeout, PeerDied, SegmentError
from sealserve.ipc import (
    Channel,
    ChannelOptions,
    Connection,
    Listener,
    Segment,
    connect,
    share_channel,
)
from sealserve.ipc._handshake import SUBSCRIBE, Entry, receive_answer, send_offer

SMALL = ChannelOptions(capacity=8, arena_bytes=256 << 10, memory="memfd")

pytestmark = pytest.mark.usefixtures("ipc_core")


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _shm_files() -> set[str]:
    return set(glob.glob("/dev/shm/sealserve-ipc-*"))


def _ipc_mappings() -> set[str]:
    """This process's mappings of ipc segments (memfd ``sealserve-ipc`` or a /dev/shm file)."""
    with open("/proc/self/maps") as maps:
        return {line.strip() for line in maps if "sealserve-ipc" in line}


class Child:
    """A Python child holding one end of a socketpair; says what it did on stdout."""

    def __init__(self, script: str, sock: socket.socket) -> None:
        fd = sock.fileno()
        prelude = (
            "import os, socket, sys, time\n"
            "from sealserve.ipc import Connection, ChannelOptions\n"
            f"sock = socket.socket(fileno={fd})\n"
            "def say(word):\n"
            "    print(word, flush=True)\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + textwrap.dedent(script)],
            pass_fds=[fd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        sock.close()

    def expect(self, word: str, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if line != word:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""  # type: ignore[union-attr]
            raise AssertionError(f"child said {line!r}, expected {word!r}; stderr: {err}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        child.close()


def test_a_killed_consumer_holding_samples_is_reclaimed(children: list[Child]) -> None:
    shm_before = _shm_files()
    mine, theirs = socket.socketpair()
    child = Child(
        """
        conn = Connection.open(sock)
        held = [conn.subscriber.receive(timeout=10) for _ in range(3)]
        say("holding")
        time.sleep(120)
        """,
        theirs,
    )
    children.append(child)
    fds_before = _open_fds()  # the child's pipes and our socket end are open already
    maps_before = _ipc_mappings()
    conn = Connection.create(mine, request=SMALL, response=SMALL)
    assert _ipc_mappings() - maps_before  # the two segments are mapped here
    assert conn.peer_pid == child.proc.pid
    for _ in range(SMALL.capacity):
        conn.publisher.send(b"job" * 100)
    child.expect("holding")
    child.kill()
    with pytest.raises(PeerDied, match="reclaimed"):
        conn.publisher.send(b"more", timeout=30)
    with pytest.raises(PeerDied):
        conn.subscriber.receive(timeout=30)
    stats = conn.publisher.stats()
    assert stats.reclaimed_slots == {"died": SMALL.capacity}
    assert stats.in_flight == 0
    assert stats.arena_bytes_in_use == 0
    conn.close()
    assert _open_fds() <= fds_before
    assert _shm_files() == shm_before
    assert _ipc_mappings() <= maps_before


def test_a_producer_killed_mid_loan_ends_in_peer_died(children: list[Child]) -> None:
    mine, theirs = socket.socketpair()
    child = Child(
        """
        conn = Connection.create(sock)
        conn.publisher.send(b"first")
        conn.publisher.send(b"second")
        loan = conn.publisher.loan(1000)
        loan.view[:4] = b"half"
        say("loaning")
        time.sleep(120)
        """,
        theirs,
    )
    children.append(child)
    fds_before = _open_fds()
    maps_before = _ipc_mappings()
    conn = Connection.open(mine)
    assert conn.peer_pid == child.proc.pid
    child.expect("loaning")
    child.kill()
    got = []
    for _ in range(2):
        sample = conn.subscriber.receive(timeout=10)
        assert sample is not None
        got.append(sample.tobytes())
        sample.release()
    assert got == [b"first", b"second"]
    with pytest.raises(PeerDied, match="died"):
        conn.subscriber.receive(timeout=30)

    def keep_replying() -> None:
        for _ in range(1000):
            conn.publisher.send(b"reply", timeout=30)

    with pytest.raises(PeerDied):
        keep_replying()
    conn.close()
    assert _open_fds() <= fds_before
    assert _ipc_mappings() <= maps_before


def test_a_producer_killed_mid_stream_fails_the_reader(children: list[Child]) -> None:
    mine, theirs = socket.socketpair()
    child = Child(
        """
        conn = Connection.create(sock, request=ChannelOptions(arena_bytes=8 << 20))
        loan = conn.publisher.loan(4 << 20)
        loan.view[: 1 << 20] = b"x" * (1 << 20)
        loan.publish(1 << 20)
        say("streaming")
        time.sleep(120)
        """,
        theirs,
    )
    children.append(child)
    maps_before = _ipc_mappings()
    conn = Connection.open(mine)
    child.expect("streaming")
    sample = conn.subscriber.receive(timeout=10)
    assert sample is not None
    first = next(sample.chunks())
    assert bytes(first[:4]) == b"xxxx"
    assert len(first) == 1 << 20
    del first
    child.kill()
    with pytest.raises(PeerDied, match="mid-message"):
        sample.wait(timeout=30)
    sample.release()
    conn.close()
    assert _ipc_mappings() <= maps_before


def test_a_full_ring_across_processes_gives_backpressure_then_peer_died(
    children: list[Child],
) -> None:
    mine, theirs = socket.socketpair()
    child = Child(
        """
        conn = Connection.open(sock)
        say("idle")
        time.sleep(120)
        """,
        theirs,
    )
    children.append(child)
    maps_before = _ipc_mappings()
    conn = Connection.create(mine, request=SMALL, response=SMALL)
    child.expect("idle")
    for _ in range(SMALL.capacity):
        conn.publisher.send(b"x")
    with pytest.raises(BackpressureTimeout, match="stayed full"):
        conn.publisher.send(b"y", timeout=0.2)
    child.kill()
    with pytest.raises(PeerDied):
        conn.publisher.send(b"y", timeout=30)
    conn.close()
    assert _ipc_mappings() <= maps_before


# -- segments the opener must refuse ---------------------------------------------------------


def _offer(segment: Segment) -> SegmentError:
    """Offer ``segment`` to Connection.open on a thread; return what the opener raised."""
    a, b = socket.socketpair()
    with ThreadPoolExecutor(1) as pool, a:
        opened = pool.submit(Connection.open, b)
        send_offer(a, [Entry(SUBSCRIBE, 0, "bad", None)], [segment.fileno()])
        answer = receive_answer(a)
        with pytest.raises(SegmentError) as raised:
            opened.result(timeout=10)
        assert answer.status == 1
        assert answer.reason == str(raised.value)
    b.close()
    return raised.value


def _memfd_segment() -> Segment:
    return Segment.create(capacity=4, arena_bytes=4096, max_subscribers=1, memory="memfd")


def test_a_segment_of_another_version_is_refused_on_both_sides() -> None:
    fds_before = _open_fds()
    with _memfd_segment() as seg:
        struct.pack_into("<I", seg.bytes, 8, 99)
        struct.pack_into("<I", seg.bytes, 72, zlib.crc32(bytes(seg.bytes[:72])))
        err = _offer(seg)
    assert "version 99" in str(err)
    assert _open_fds() <= fds_before


def test_a_corrupt_header_is_refused() -> None:
    with _memfd_segment() as seg:
        seg.bytes[40] ^= 0xFF
        assert "corrupt" in str(_offer(seg))


def test_a_file_that_is_not_a_segment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes"
    path.write_bytes(b"just a file" * 1000)
    path.chmod(0o600)
    fd = os.open(path, os.O_RDWR)
    try:
        seg = _memfd_segment()
        # swap the memfd for the plain file behind the segment's back
        os.dup2(fd, seg.fileno())
        assert "not a sealserve channel segment" in str(_offer(seg))
        seg.close()
    finally:
        os.close(fd)


def test_an_unsealed_memfd_is_refused() -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 8192)
    seg = _memfd_segment()
    os.dup2(fd, seg.fileno())
    os.close(fd)
    assert "not sealed" in str(_offer(seg))
    seg.close()


def test_a_creator_is_told_why_the_peer_refused() -> None:
    a, b = socket.socketpair()

    def refuse() -> None:
        from sealserve.ipc._handshake import receive_offer, send_answer

        offer = receive_offer(b)
        for fd in offer.fds:
            os.close(fd)
        send_answer(b, status=1, reason="segment has layout version 1, this speaks 2")

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(refuse)
        with pytest.raises(SegmentError, match=r"refused the segments: .*version 1"):
            Connection.create(a, request=SMALL, response=SMALL)
        done.result(timeout=10)
    a.close()
    b.close()


# -- memory, modes, names --------------------------------------------------------------------


def test_memfd_segments_are_private_and_sealed() -> None:
    with _memfd_segment() as seg:
        info = os.fstat(seg.fileno())
        assert info.st_mode & 0o777 == 0o600
        seals = fcntl.fcntl(seg.fileno(), fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK
        assert seals & fcntl.F_SEAL_GROW
        with pytest.raises(PermissionError):
            os.ftruncate(seg.fileno(), 0)


def test_the_dev_shm_fallback_leaves_no_name_and_works_across_a_socket() -> None:
    before = _shm_files()
    opts = dataclasses.replace(SMALL, memory="shm")
    with Channel.create(opts) as ch:
        assert ch.segment.kind == "shm"
        assert _shm_files() == before  # unlinked as soon as it was mapped
        assert os.fstat(ch.segment.fileno()).st_mode & 0o777 == 0o600
        pub = ch.publisher()
        a, b = socket.socketpair()
        with ThreadPoolExecutor(1) as pool:
            opened = pool.submit(Connection.open, b)
            share_channel(ch, a)
            conn = opened.result(timeout=10)
        pub.send(b"through /dev/shm")
        sample = conn.subscriber.receive(timeout=5)
        assert sample is not None
        assert sample.tobytes() == b"through /dev/shm"
        sample.release()
        conn.close()
    assert _shm_files() == before


def test_listener_and_connect_by_path(tmp_path: Path) -> None:
    path = tmp_path / "ipc.sock"
    with Listener.bind(path) as listener, ThreadPoolExecutor(1) as pool:
        assert path.stat().st_mode & 0o777 == 0o600
        accepted = pool.submit(listener.accept_connection, request=SMALL, response=SMALL)
        with connect(path) as rt:
            host = accepted.result(timeout=10)
            host.publisher.send(b"ping")
            sample = rt.subscriber.receive(timeout=5)
            assert sample is not None
            assert sample.tobytes() == b"ping"
            sample.release()
            rt.publisher.send(b"pong")
            reply = host.subscriber.receive(timeout=5)
            assert reply is not None
            assert reply.tobytes() == b"pong"
            reply.release()
            host.close()
        with Channel.create(dataclasses.replace(SMALL, max_subscribers=2)) as ch:
            pub = ch.publisher()
            slots = pool.submit(listener.accept_subscriber, ch, timeout=10)
            with connect(path) as sub_conn:
                assert slots.result(timeout=10) == 0
                pub.send(b"fan-out")
                got = sub_conn.subscriber.receive(timeout=5)
                assert got is not None
                assert got.tobytes() == b"fan-out"
                got.release()
    assert not path.exists()


def test_a_connection_is_refused_when_nobody_listens(tmp_path: Path) -> None:
    from sealserve.errors import IPCError

    with pytest.raises(IPCError, match="could not connect"):
        connect(tmp_path / "nobody.sock", timeout=1)
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "nobody.sock").unlink()
