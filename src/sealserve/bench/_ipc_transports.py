"""The transports ``sealserve bench ipc`` compares, each as a producer side and a consumer side.

Every transport does the same useful work per message (:mod:`sealserve.bench._ipc_work`): the
producer writes every byte (a header with the sequence number and the send time, then a body
that differs from message to message), the consumer reads and checks every byte.  The send
time is taken when the producer starts to send, before it asks for a buffer, so a loan's
cost counts like a copy's.  What differs is how the bytes travel:

``baseline``            a shared-memory ring of fixed slots: write into a private buffer,
                        ``memcpy`` in, block on a futex, ``memcpy`` out into a private
                        buffer, check (the paper's baseline);
``reference``           the simplest in-place ring in pure Python (the issue's comparison):
                        fixed slots, write and read in place, spin then block, several
                        messages in flight; no channel feature (one reader, in-order release,
                        no validation of a hostile writer): what Python alone costs per message;
``sealserve-<mode>``    this project's channel, ``mode`` one of ``copy`` (send, inline copy),
                        ``loan`` (write in place, read in place), ``stream`` (loan published
                        chunk by chunk, read chunk by chunk), ``offload`` (send_async through
                        the helper-thread engine), ``pipelined`` (send, chunked copy the reader
                        overlaps with), ``auto`` (send_async, the scheduler decides and
                        learns: one scheduler per hint for the life of the worker process;
                        the same buffer again whenever its last copy has landed, so an inline
                        decision works on a hot buffer as ``copy`` does);
``multiprocessing``, ``zmq``, ``iceoryx2``  the peers (:mod:`sealserve.bench._ipc_peers`).

Shared memory is mapped and faulted in up front on both sides, for the baseline's ring as for
a channel's arena, so no timed phase pays a first-touch fault.
"""

from __future__ import annotations

import mmap
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealserve.bench._ipc_work import Work
from sealserve.ipc import (
    Channel,
    ChannelOptions,
    Connection,
    Listener,
    QoS,
    Scheduler,
    _sys,
)
from sealserve.ipc import (
    Path as CopyPath,
)

__all__ = [
    "END",
    "MODES",
    "Consumer",
    "Producer",
    "available_transports",
    "connect_retry",
    "make_consumer",
    "make_producer",
]

#: The sequence number of the message that ends a phase.
END = 1 << 62
MODES = ("copy", "loan", "stream", "offload", "pipelined", "auto")
_STREAM_CHUNK = 256 << 10
_MADV_POPULATE_READ = 22
_MADV_POPULATE_WRITE = 23


class Producer:
    """Writes and sends messages of one size."""

    def __init__(self, size: int, depth: int, where: Path) -> None:
        self.size = size
        self.depth = depth
        self.where = where
        self.work = Work(size)

    def send(self, seq: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Wait until everything sent has left the producer's buffers."""

    def report(self) -> Any:
        """What the transport wants to say about the case (JSON-able), or ``None``."""
        return None

    def close(self) -> None:
        raise NotImplementedError


class Consumer:
    """Receives and checks messages of one size; ``receive`` returns (seq, sent_ns)."""

    def __init__(self, size: int, depth: int, where: Path) -> None:
        self.size = size
        self.depth = depth
        self.where = where
        self.work = Work(size)

    def receive(self) -> tuple[int, int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def prefault(mapping: mmap.mmap, *, write: bool) -> None:
    """Map every page of ``mapping`` now (``MADV_POPULATE_*``; touching pages where missing)."""
    try:
        mapping.madvise(_MADV_POPULATE_WRITE if write else _MADV_POPULATE_READ)
    except (OSError, ValueError):
        view = memoryview(mapping)
        try:
            for at in range(0, len(view), mmap.PAGESIZE):
                if write:
                    view[at] = view[at]
                else:
                    _ = view[at]
        finally:
            view.release()


# -- baseline: shm ring + memcpy in + memcpy out + blocking futex -------------------------------

_B_HEAD, _B_TAIL, _B_CWAIT, _B_PWAIT, _B_DATA, _B_SPACE = 0, 8, 16, 24, 32, 40
_B_HEADER = 4096


class _BaselineRing:
    def __init__(self, mapping: mmap.mmap, size: int, depth: int, *, write: bool) -> None:
        # Map every page now, as a ring set up for speed would (MAP_POPULATE): the timed
        # phases then never pay a first-touch fault, whatever the warm-up covered.
        prefault(mapping, write=write)
        self.map = mapping
        self.mv = memoryview(mapping)
        self.w = self.mv.cast("Q")
        self.address = _sys.address_of(mapping)
        self.depth = depth
        self.slots = [
            self.mv[_B_HEADER + i * size : _B_HEADER + (i + 1) * size] for i in range(depth)
        ]

    def wait(self, ready: Callable[[], bool], flag: int, epoch: int) -> None:
        w = self.w
        while not ready():
            e = w[epoch // 8] & 0xFFFFFFFF
            w[flag // 8] = 1
            _sys.full_fence()
            if ready():
                w[flag // 8] = 0
                return
            _sys.futex_wait(self.address + epoch, e, 0.05)
            w[flag // 8] = 0

    def wake(self, flag: int, epoch: int) -> None:
        w = self.w
        _sys.full_fence()
        if w[flag // 8]:
            w[epoch // 8] = (w[epoch // 8] + 1) & 0xFFFFFFFF
            _sys.futex_wake(self.address + epoch)

    def close(self) -> None:
        for view in self.slots:
            view.release()
        self.w.release()
        self.mv.release()
        self.map.close()


def _ring_bytes(size: int, depth: int) -> int:
    return _B_HEADER + size * depth


class BaselineProducer(Producer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        super().__init__(size, depth, where)
        fd = _sys.memfd_create("bench-baseline")
        os.ftruncate(fd, _ring_bytes(size, depth))
        self.ring = _BaselineRing(mmap.mmap(fd, _ring_bytes(size, depth)), size, depth, write=True)
        self.private = memoryview(bytearray(size))
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(where / "baseline.sock"))
        self.listener.listen(1)
        conn, _ = self.listener.accept()
        socket.send_fds(conn, [b"x"], [fd])
        conn.recv(1)
        conn.close()
        os.close(fd)
        self.head = 0

    def send(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        ring = self.ring
        w = ring.w
        self.work.fill(self.private, seq, t0)
        head = self.head
        if head - w[_B_TAIL // 8] >= ring.depth:
            ring.wait(lambda: head - w[_B_TAIL // 8] < ring.depth, _B_PWAIT, _B_SPACE)
        ring.slots[head % ring.depth][:] = self.private  # memcpy in
        self.head = head + 1
        w[_B_HEAD // 8] = head + 1
        ring.wake(_B_CWAIT, _B_DATA)

    def close(self) -> None:
        self.listener.close()
        self.ring.close()


class BaselineConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        super().__init__(size, depth, where)
        sock = connect_retry(where / "baseline.sock")
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        sock.sendall(b"y")
        sock.close()
        self.ring = _BaselineRing(
            mmap.mmap(fds[0], _ring_bytes(size, depth)), size, depth, write=False
        )
        os.close(fds[0])
        self.private = memoryview(bytearray(size))
        self.tail = 0

    def receive(self) -> tuple[int, int]:
        ring = self.ring
        w = ring.w
        tail = self.tail
        if w[_B_HEAD // 8] == tail:
            ring.wait(lambda: w[_B_HEAD // 8] != tail, _B_CWAIT, _B_DATA)
        self.private[:] = ring.slots[tail % ring.depth]  # memcpy out
        self.tail = tail + 1
        w[_B_TAIL // 8] = tail + 1
        ring.wake(_B_PWAIT, _B_SPACE)
        return self.work.check(self.private)

    def close(self) -> None:
        self.ring.close()


# -- reference: the simplest in-place ring in pure Python ---------------------------------------

#: How long the reference ring spins before it blocks.
_REFERENCE_SPIN_NS = 50_000


def _spin_then_wait(ring: _BaselineRing, ready: Callable[[], bool], flag: int, epoch: int) -> None:
    limit = time.perf_counter_ns() + _REFERENCE_SPIN_NS
    while time.perf_counter_ns() < limit:
        if ready():
            return
    ring.wait(ready, flag, epoch)


class ReferenceProducer(Producer):
    """Writes each message in place into the next fixed slot; spins, then blocks, for room."""

    def __init__(self, size: int, depth: int, where: Path) -> None:
        super().__init__(size, depth, where)
        fd = _sys.memfd_create("bench-reference")
        os.ftruncate(fd, _ring_bytes(size, depth))
        self.ring = _BaselineRing(mmap.mmap(fd, _ring_bytes(size, depth)), size, depth, write=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(where / "reference.sock"))
        self.listener.listen(1)
        conn, _ = self.listener.accept()
        socket.send_fds(conn, [b"x"], [fd])
        conn.recv(1)
        conn.close()
        os.close(fd)
        self.head = 0

    def send(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        ring = self.ring
        w = ring.w
        head = self.head
        depth = ring.depth
        if head - w[_B_TAIL // 8] >= depth:
            _spin_then_wait(ring, lambda: head - w[_B_TAIL // 8] < depth, _B_PWAIT, _B_SPACE)
        self.work.fill(ring.slots[head % depth], seq, t0)  # in place: no private buffer
        self.head = head + 1
        w[_B_HEAD // 8] = head + 1
        ring.wake(_B_CWAIT, _B_DATA)

    def close(self) -> None:
        self.listener.close()
        self.ring.close()


class ReferenceConsumer(Consumer):
    """Checks each message in place in its slot; spins, then blocks, for the next one."""

    def __init__(self, size: int, depth: int, where: Path) -> None:
        super().__init__(size, depth, where)
        sock = connect_retry(where / "reference.sock")
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        sock.sendall(b"y")
        sock.close()
        self.ring = _BaselineRing(
            mmap.mmap(fds[0], _ring_bytes(size, depth)), size, depth, write=False
        )
        os.close(fds[0])
        self.tail = 0

    def receive(self) -> tuple[int, int]:
        ring = self.ring
        w = ring.w
        tail = self.tail
        if w[_B_HEAD // 8] == tail:
            _spin_then_wait(ring, lambda: w[_B_HEAD // 8] != tail, _B_CWAIT, _B_DATA)
        out = self.work.check(ring.slots[tail % ring.depth])  # in place: no copy out
        self.tail = tail + 1
        w[_B_TAIL // 8] = tail + 1
        ring.wake(_B_PWAIT, _B_SPACE)
        return out

    def close(self) -> None:
        self.ring.close()


# -- sealserve ----------------------------------------------------------------------------------


def _channel_options(size: int, depth: int) -> ChannelOptions:
    capacity = 1 << max(depth - 1, 1).bit_length()
    arena = max(depth * ((size + 4095) // 4096 * 4096), 1 << 20)
    return ChannelOptions(capacity=capacity, arena_bytes=arena, memory="memfd")


class SealserveProducer(Producer):
    def __init__(self, size: int, depth: int, where: Path, *, mode: str, qos: str) -> None:
        super().__init__(size, depth, where)
        self.mode = mode
        self.qos = QoS.parse(qos)
        self.channel = Channel.create(_channel_options(size, depth), name="bench")
        self.channel.segment.prefault()  # as the baseline's ring: no first-touch faults
        force = {
            "copy": CopyPath.INLINE,
            "offload": CopyPath.OFFLOAD,
            "pipelined": CopyPath.PIPELINED,
        }.get(mode)
        scheduler = _learning_scheduler(self.qos) if mode == "auto" else Scheduler(force=force)
        self.pub = self.channel.publisher(qos=self.qos, scheduler=scheduler)
        with Listener.bind(where / "sealserve.sock") as listener:
            listener.accept_subscriber(self.channel, timeout=30)
        n_buffers = depth + 1 if mode in ("offload", "auto") else 1
        self.buffers = [memoryview(bytearray(size)) for _ in range(n_buffers)]
        self.completions: list[Any] = [None] * n_buffers
        self.turn = 0
        self._send: Callable[[int], None] = {
            "loan": self._send_loan,
            "stream": self._send_stream,
            "offload": self._send_offload,
            "auto": self._send_auto,
        }.get(mode, self._send_copy)

    def send(self, seq: int) -> None:
        self._send(seq)

    def _send_loan(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        loan = self.pub.loan(self.size)
        self.work.fill(loan.view, seq, t0)
        loan.commit()

    def _send_stream(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        loan = self.pub.loan(self.size)
        self.work.fill_chunked(loan.view, seq, t0, _STREAM_CHUNK, loan.publish)
        loan.commit()

    def _send_offload(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        i = self.turn
        self.turn = (i + 1) % len(self.buffers)
        done = self.completions[i]
        if done is not None:
            done.wait()
        buf = self.buffers[i]
        self.work.fill(buf, seq, t0)
        self.completions[i] = self.pub.send_async(buf)

    def _send_auto(self, seq: int) -> None:
        """``send_async``, so that every path is open to the scheduler; the same (hot) buffer
        again while the last copy out of it has landed, the next one only while it has not."""
        t0 = time.perf_counter_ns()
        i = self.turn
        done = self.completions[i]
        if done is not None and not done.done():
            i = self.turn = (i + 1) % len(self.buffers)
            done = self.completions[i]
            if done is not None:
                done.wait()
        buf = self.buffers[i]
        self.work.fill(buf, seq, t0)
        self.completions[i] = self.pub.send_async(buf)

    def _send_copy(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        buf = self.buffers[0]
        self.work.fill(buf, seq, t0)
        self.pub.send(buf)

    def flush(self) -> None:
        self.pub.flush()

    def report(self) -> Any:
        """For ``auto``: what the scheduler learned for this size (path, why, costs)."""
        if self.mode != "auto":
            return None
        snap = self.pub.stats().scheduler or {}
        size_class = self.size.bit_length()
        return {
            "decisions": snap.get("decisions", {}),
            "learned": [
                c for c in snap.get("learned", []) if c["bytes"][1].bit_length() == size_class
            ],
        }

    def close(self) -> None:
        self.channel.close()


#: One learning scheduler per hint for the life of a worker process, as a long-lived
#: connection has: what ``auto`` measured in one case serves the next one of the same size.
_LEARNING: dict[QoS, Scheduler] = {}


def _learning_scheduler(qos: QoS) -> Scheduler:
    scheduler = _LEARNING.get(qos)
    if scheduler is None:
        scheduler = _LEARNING[qos] = Scheduler(cache_bytes=_sys.consumer_cache_bytes())
    return scheduler


class SealserveConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path, *, mode: str, qos: str) -> None:
        super().__init__(size, depth, where)
        self.chunked = mode in ("stream", "pipelined")
        sock = connect_retry(where / "sealserve.sock")
        self.conn: Connection = Connection.open(sock, qos=qos, timeout=30)
        self.sub = self.conn.subscriber
        self.sub.channel.segment.prefault()  # this side's mapping too

    def receive(self) -> tuple[int, int]:
        sample = self.sub.receive()
        assert sample is not None
        work = self.work
        if not self.chunked or sample.complete:
            out = work.check(sample.view)
        else:
            for piece in sample.chunks():
                work.feed(piece)
            out = work.finish()
        sample.release()
        return out

    def close(self) -> None:
        self.conn.close()


# -- registry ----------------------------------------------------------------------------------


def connect_retry(path: Path, timeout: float = 30.0) -> socket.socket:
    """Connect to a Unix socket the peer is about to bind."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def available_transports() -> list[str]:
    """Every transport this machine can run, baseline first."""
    names = ["baseline", "reference"]
    names += [f"sealserve-{mode}-{qos.value}" for mode in MODES for qos in QoS]
    names.append("multiprocessing")
    for module, name in (("zmq", "zmq"), ("iceoryx2", "iceoryx2")):
        try:
            __import__(module)
        except ImportError:
            continue
        names.append(name)
    return names


def make_producer(transport: str, size: int, depth: int, where: Path, *, queue: Any) -> Producer:
    from sealserve.bench import _ipc_peers

    if transport == "baseline":
        return BaselineProducer(size, depth, where)
    if transport == "reference":
        return ReferenceProducer(size, depth, where)
    if transport.startswith("sealserve-"):
        _, mode, qos = transport.split("-", 2)
        return SealserveProducer(size, depth, where, mode=mode, qos=qos)
    return _ipc_peers.make_producer(transport, size, depth, where, queue=queue)


def make_consumer(transport: str, size: int, depth: int, where: Path, *, queue: Any) -> Consumer:
    from sealserve.bench import _ipc_peers

    if transport == "baseline":
        return BaselineConsumer(size, depth, where)
    if transport == "reference":
        return ReferenceConsumer(size, depth, where)
    if transport.startswith("sealserve-"):
        _, mode, qos = transport.split("-", 2)
        return SealserveConsumer(size, depth, where, mode=mode, qos=qos)
    return _ipc_peers.make_consumer(transport, size, depth, where, queue=queue)
