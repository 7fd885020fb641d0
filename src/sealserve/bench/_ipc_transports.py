"""The transports ``sealserve bench ipc`` compares, each as a producer side and a consumer side.

Every transport does the same useful work per message: the producer writes every byte
(:func:`fill`: a header with the sequence number and the send time, then the body), and the
consumer reads and checks every byte (:class:`Check`: the body's 64-bit wrapping sum must be
``seq * words``).  What differs is how the bytes travel:

``baseline``            a shared-memory ring of fixed slots: write into a private buffer,
                        copy in, block on a futex, copy out into a private buffer, check
                        (the paper's baseline);
``sealserve-<mode>``    this project's channel, ``mode`` one of ``copy`` (send, inline copy),
                        ``loan`` (write in place, read in place), ``stream`` (loan published
                        chunk by chunk, read chunk by chunk), ``offload`` (send_async through
                        the helper-thread engine), ``pipelined`` (send, chunked copy the reader
                        overlaps with), ``auto`` (send, the scheduler decides);
``multiprocessing``     ``multiprocessing.Queue`` (pickles through a pipe);
``zmq``                 pyzmq PAIR sockets over ``ipc://``;
``iceoryx2``            iceoryx2 publish-subscribe over a slice of bytes (loaned, zero-copy),
                        with an event service to wake the subscriber.
"""

from __future__ import annotations

import ctypes
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
    "Check",
    "Consumer",
    "Producer",
    "available_transports",
    "fill",
    "make_consumer",
    "make_producer",
]

#: The sequence number of the message that ends a phase.
END = 1 << 62
MODES = ("copy", "loan", "stream", "offload", "pipelined", "auto")
_HEADER_WORDS = 2
_STREAM_CHUNK = 256 << 10


def fill(words: np.ndarray[Any, Any], seq: int) -> None:
    """Write a whole message: send time, body, then the sequence number."""
    words[1] = time.perf_counter_ns()
    words[_HEADER_WORDS:] = seq
    words[0] = seq


def _fill_chunked(words: np.ndarray[Any, Any], seq: int, publish: Callable[[int], None]) -> None:
    words[1] = time.perf_counter_ns()
    words[0] = seq
    step = _STREAM_CHUNK // 8
    n = len(words)
    pos = _HEADER_WORDS
    while pos < n:
        end = min(pos + step, n)
        words[pos:end] = seq
        pos = end
        publish(pos * 8)


class CheckFailed(AssertionError):
    """A message arrived torn, stale or corrupt."""


class Check:
    """Reads every byte of a message (in one piece or in chunks) and checks it."""

    __slots__ = ("_sum", "_words", "sent_ns", "seq")

    def __init__(self, nwords: int) -> None:
        self._words = nwords
        self._sum = 0
        self.seq = -1
        self.sent_ns = 0

    def whole(self, words: np.ndarray[Any, Any]) -> tuple[int, int]:
        self.seq = -1
        self._sum = 0
        self.feed(words, 0)
        return self.finish()

    def feed(self, words: np.ndarray[Any, Any], first_word: int) -> None:
        if first_word == 0:
            self.seq = int(words[0])
            self.sent_ns = int(words[1])
            body = words[_HEADER_WORDS:]
        else:
            body = words
        self._sum = (self._sum + int(body.sum())) & 0xFFFFFFFFFFFFFFFF

    def finish(self) -> tuple[int, int]:
        expected = (self.seq * (self._words - _HEADER_WORDS)) & 0xFFFFFFFFFFFFFFFF
        if self._sum != expected:
            raise CheckFailed(f"message {self.seq} is torn or stale")
        seq, sent = self.seq, self.sent_ns
        self._sum = 0
        return seq, sent


class Producer:
    """Writes and sends messages of one size."""

    def __init__(self, size: int, depth: int, where: Path) -> None:
        self.size = size
        self.depth = depth
        self.where = where

    def send(self, seq: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Wait until everything sent has left the producer's buffers."""

    def close(self) -> None:
        raise NotImplementedError


class Consumer:
    """Receives and checks messages of one size; ``receive`` returns (seq, sent_ns)."""

    def __init__(self, size: int, depth: int, where: Path) -> None:
        self.size = size
        self.depth = depth
        self.where = where
        self.check = Check(size // 8)

    def receive(self) -> tuple[int, int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


# -- baseline: shm ring + memcpy in + memcpy out + blocking futex -------------------------------

_B_HEAD, _B_TAIL, _B_CWAIT, _B_PWAIT, _B_DATA, _B_SPACE = 0, 8, 16, 24, 32, 40
_B_HEADER = 4096


class _BaselineRing:
    def __init__(self, mapping: Any, size: int, depth: int) -> None:
        self.map = mapping
        self.w = memoryview(mapping).cast("Q")
        self.address = _sys.address_of(mapping)
        self.size = size
        self.depth = depth
        self.slots = np.frombuffer(mapping, np.uint64, offset=_B_HEADER).reshape(depth, size // 8)
        # Map every page now, as a ring set up for speed would (MAP_POPULATE): the timed
        # phases then never pay a first-touch fault, whatever the warm-up covered.
        self.slots.sum()

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
        del self.slots
        self.w.release()
        self.map.close()


def _ring_bytes(size: int, depth: int) -> int:
    return _B_HEADER + size * depth


class BaselineProducer(Producer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import mmap

        super().__init__(size, depth, where)
        fd = _sys.memfd_create("bench-baseline")
        os.ftruncate(fd, _ring_bytes(size, depth))
        mapping = mmap.mmap(fd, _ring_bytes(size, depth))
        mapping.write(bytes(_ring_bytes(size, depth)))  # allocate every page up front
        self.ring = _BaselineRing(mapping, size, depth)
        self.private = np.zeros(size // 8, np.uint64)
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
        ring = self.ring
        w = ring.w
        fill(self.private, seq)
        head = self.head
        if head - w[_B_TAIL // 8] >= ring.depth:
            ring.wait(lambda: head - w[_B_TAIL // 8] < ring.depth, _B_PWAIT, _B_SPACE)
        np.copyto(ring.slots[head % ring.depth], self.private)
        self.head = head + 1
        w[_B_HEAD // 8] = head + 1
        ring.wake(_B_CWAIT, _B_DATA)

    def close(self) -> None:
        self.listener.close()
        self.ring.close()


class BaselineConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import mmap

        super().__init__(size, depth, where)
        sock = _connect_retry(where / "baseline.sock")
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        sock.sendall(b"y")
        sock.close()
        self.ring = _BaselineRing(mmap.mmap(fds[0], _ring_bytes(size, depth)), size, depth)
        os.close(fds[0])
        self.private = np.zeros(size // 8, np.uint64)
        self.tail = 0

    def receive(self) -> tuple[int, int]:
        ring = self.ring
        w = ring.w
        tail = self.tail
        if w[_B_HEAD // 8] == tail:
            ring.wait(lambda: w[_B_HEAD // 8] != tail, _B_CWAIT, _B_DATA)
        np.copyto(self.private, ring.slots[tail % ring.depth])
        self.tail = tail + 1
        w[_B_TAIL // 8] = tail + 1
        ring.wake(_B_PWAIT, _B_SPACE)
        return self.check.whole(self.private)

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
        force = {
            "copy": CopyPath.INLINE,
            "offload": CopyPath.OFFLOAD,
            "pipelined": CopyPath.PIPELINED,
        }.get(mode)
        self.pub = self.channel.publisher(qos=self.qos, scheduler=Scheduler(force=force))
        with Listener.bind(where / "sealserve.sock") as listener:
            listener.accept_subscriber(self.channel, timeout=30)
        n_buffers = depth + 1 if mode == "offload" else 1
        self.buffers = [np.zeros(size // 8, np.uint64) for _ in range(n_buffers)]
        self.completions: list[Any] = [None] * n_buffers
        self.turn = 0

    def send(self, seq: int) -> None:
        mode = self.mode
        if mode == "loan":
            loan = self.pub.loan(self.size)
            fill(loan.array(np.uint64), seq)
            loan.commit()
        elif mode == "stream":
            loan = self.pub.loan(self.size)
            _fill_chunked(loan.array(np.uint64), seq, loan.publish)
            loan.commit()
        elif mode == "offload":
            i = self.turn
            self.turn = (i + 1) % len(self.buffers)
            done = self.completions[i]
            if done is not None:
                done.wait()
            buf = self.buffers[i]
            fill(buf, seq)
            self.completions[i] = self.pub.send_async(buf)
        else:
            buf = self.buffers[0]
            fill(buf, seq)
            self.pub.send(buf)

    def flush(self) -> None:
        self.pub.flush()

    def close(self) -> None:
        self.channel.close()


class SealserveConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path, *, mode: str, qos: str) -> None:
        super().__init__(size, depth, where)
        self.chunked = mode in ("stream", "pipelined")
        sock = _connect_retry(where / "sealserve.sock")
        self.conn: Connection = Connection.open(sock, qos=qos, timeout=30)
        self.sub = self.conn.subscriber

    def receive(self) -> tuple[int, int]:
        sample = self.sub.receive()
        assert sample is not None
        check = self.check
        if self.chunked and not sample.complete:
            first = 0
            for piece in sample.chunks():
                words = np.frombuffer(piece, np.uint64)
                check.feed(words, first)
                first += len(words)
            out = check.finish()
        else:
            out = check.whole(sample.array(np.uint64))
        sample.release()
        return out

    def close(self) -> None:
        self.conn.close()


# -- multiprocessing, zmq, iceoryx2 ------------------------------------------------------------


class QueueProducer(Producer):
    """A fresh array per message: ``Queue.put`` pickles it later, on its feeder thread."""

    def __init__(self, size: int, depth: int, where: Path, *, queue: Any) -> None:
        super().__init__(size, depth, where)
        self.queue = queue

    def send(self, seq: int) -> None:
        buf = np.empty(self.size // 8, np.uint64)
        fill(buf, seq)
        self.queue.put(buf)

    def close(self) -> None:
        return None


class QueueConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path, *, queue: Any) -> None:
        super().__init__(size, depth, where)
        self.queue = queue

    def receive(self) -> tuple[int, int]:
        return self.check.whole(self.queue.get())

    def close(self) -> None:
        return None


_ZMQ_COPY_BELOW = 64 << 10


class ZmqProducer(Producer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import zmq

        super().__init__(size, depth, where)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.SNDHWM, depth)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind(f"ipc://{where / 'zmq.sock'}")
        self.buffers = [np.zeros(size // 8, np.uint64) for _ in range(depth + 1)]
        self.trackers: list[Any] = [None] * len(self.buffers)
        self.turn = 0

    def send(self, seq: int) -> None:
        i = self.turn
        self.turn = (i + 1) % len(self.buffers)
        if self.trackers[i] is not None:
            self.trackers[i].wait()
        buf = self.buffers[i]
        fill(buf, seq)
        if self.size < _ZMQ_COPY_BELOW:
            self.sock.send(buf.data, copy=True)
        else:
            self.trackers[i] = self.sock.send(buf.data, copy=False, track=True)

    def flush(self) -> None:
        for t in self.trackers:
            if t is not None:
                t.wait()

    def close(self) -> None:
        self.flush()
        self.sock.close()
        self.ctx.term()


class ZmqConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import zmq

        super().__init__(size, depth, where)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.RCVHWM, depth)
        self.sock.connect(f"ipc://{where / 'zmq.sock'}")

    def receive(self) -> tuple[int, int]:
        frame = self.sock.recv(copy=self.size < _ZMQ_COPY_BELOW)
        data = frame if isinstance(frame, bytes) else frame.buffer
        return self.check.whole(np.frombuffer(data, np.uint64))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _iox_names(where: Path) -> tuple[str, str]:
    tag = f"sealserve-bench-{where.parent.name}-{where.name}"
    return tag, tag + "-event"


class IceoryxProducer(Producer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import iceoryx2 as iox2

        super().__init__(size, depth, where)
        iox2.set_log_level(iox2.LogLevel.Error)
        data, event = _iox_names(where)
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.service = (
            self.node.service_builder(iox2.ServiceName.new(data))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(depth)
            .open_or_create()
        )
        self.events = (
            self.node.service_builder(iox2.ServiceName.new(event)).event().open_or_create()
        )
        self.pub = (
            self.service.publisher_builder()
            .initial_max_slice_len(size)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.notifier = self.events.notifier_builder().create()
        (where / "iceoryx2.ready").touch()
        _wait_for(where / "iceoryx2.subscribed")

    def send(self, seq: int) -> None:
        sample = self.pub.loan_slice_uninit(self.size)
        words = np.frombuffer(sample.payload().as_memory_view(), np.uint64)
        fill(words, seq)
        del words
        sample.assume_init().send()
        self.notifier.notify()

    def close(self) -> None:
        for name in ("notifier", "pub", "events", "service", "node"):
            delattr(self, name)


class IceoryxConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import iceoryx2 as iox2

        super().__init__(size, depth, where)
        iox2.set_log_level(iox2.LogLevel.Error)
        _wait_for(where / "iceoryx2.ready")
        data, event = _iox_names(where)
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.service = (
            self.node.service_builder(iox2.ServiceName.new(data))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(depth)
            .open_or_create()
        )
        self.events = (
            self.node.service_builder(iox2.ServiceName.new(event)).event().open_or_create()
        )
        self.sub = self.service.subscriber_builder().buffer_size(depth).create()
        self.listener = self.events.listener_builder().create()
        self.wait = iox2.Duration.from_millis(50)
        (where / "iceoryx2.subscribed").touch()

    def receive(self) -> tuple[int, int]:
        while True:
            sample = self.sub.receive()
            if sample is not None:
                break
            self.listener.timed_wait(self.wait)
        words = np.frombuffer(sample.payload().as_memory_view(), np.uint64)
        out = self.check.whole(words)
        del words, sample
        return out

    def close(self) -> None:
        for name in ("listener", "sub", "events", "service", "node"):
            delattr(self, name)


# -- registry ----------------------------------------------------------------------------------


def _connect_retry(path: Path, timeout: float = 30.0) -> socket.socket:
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


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer did not create {path.name}")
        time.sleep(0.002)


def available_transports() -> list[str]:
    """Every transport this machine can run, baseline first."""
    names = ["baseline"]
    names += [f"sealserve-{mode}-{qos.value}" for mode in MODES for qos in QoS]
    names.append("multiprocessing")
    for module, name in (("zmq", "zmq"), ("iceoryx2", "iceoryx2")):
        try:
            __import__(module)
        except ImportError:
            continue
        names.append(name)
    return names


def _split(transport: str) -> tuple[str, str, str]:
    _, mode, qos = transport.split("-", 2)
    return "sealserve", mode, qos


def make_producer(transport: str, size: int, depth: int, where: Path, *, queue: Any) -> Producer:
    if transport == "baseline":
        return BaselineProducer(size, depth, where)
    if transport.startswith("sealserve-"):
        _, mode, qos = _split(transport)
        return SealserveProducer(size, depth, where, mode=mode, qos=qos)
    if transport == "multiprocessing":
        return QueueProducer(size, depth, where, queue=queue)
    if transport == "zmq":
        return ZmqProducer(size, depth, where)
    if transport == "iceoryx2":
        return IceoryxProducer(size, depth, where)
    raise ValueError(f"unknown transport {transport!r}")


def make_consumer(transport: str, size: int, depth: int, where: Path, *, queue: Any) -> Consumer:
    if transport == "baseline":
        return BaselineConsumer(size, depth, where)
    if transport.startswith("sealserve-"):
        _, mode, qos = _split(transport)
        return SealserveConsumer(size, depth, where, mode=mode, qos=qos)
    if transport == "multiprocessing":
        return QueueConsumer(size, depth, where, queue=queue)
    if transport == "zmq":
        return ZmqConsumer(size, depth, where)
    if transport == "iceoryx2":
        return IceoryxConsumer(size, depth, where)
    raise ValueError(f"unknown transport {transport!r}")
