"""The peers ``sealserve bench ipc`` compares with: multiprocessing, pyzmq and iceoryx2.

Each does the same useful work per message as every other transport
(:mod:`sealserve.bench._ipc_work`), through its own API:

``multiprocessing``     ``multiprocessing.Queue``: a fresh buffer per message, pickled
                        through a pipe by the queue's feeder thread;
``zmq``                 pyzmq PAIR sockets over ``ipc://`` (zero-copy sends with a tracker
                        from 64 KiB up, as pyzmq recommends);
``iceoryx2``            iceoryx2 publish-subscribe over a loaned slice of bytes (written and
                        read in place), with an event service to wake the subscriber.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Any

from sealserve.bench._ipc_transports import Consumer, Producer

__all__ = ["make_consumer", "make_producer"]

_ZMQ_COPY_BELOW = 64 << 10


class QueueProducer(Producer):
    """A fresh buffer per message: ``Queue.put`` pickles it later, on its feeder thread."""

    def __init__(self, size: int, depth: int, where: Path, *, queue: Any) -> None:
        super().__init__(size, depth, where)
        self.queue = queue

    def send(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        buf = bytearray(self.size)
        self.work.fill(memoryview(buf), seq, t0)
        self.queue.put(buf)

    def close(self) -> None:
        return None


class QueueConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path, *, queue: Any) -> None:
        super().__init__(size, depth, where)
        self.queue = queue

    def receive(self) -> tuple[int, int]:
        return self.work.check(memoryview(self.queue.get()))

    def close(self) -> None:
        return None


class ZmqProducer(Producer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import zmq

        super().__init__(size, depth, where)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.SNDHWM, depth)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind(f"ipc://{where / 'zmq.sock'}")
        self.buffers = [memoryview(bytearray(size)) for _ in range(depth + 1)]
        self.trackers: list[Any] = [None] * len(self.buffers)
        self.turn = 0

    def send(self, seq: int) -> None:
        t0 = time.perf_counter_ns()
        i = self.turn
        self.turn = (i + 1) % len(self.buffers)
        if self.trackers[i] is not None:
            self.trackers[i].wait()
        buf = self.buffers[i]
        self.work.fill(buf, seq, t0)
        if self.size < _ZMQ_COPY_BELOW:
            self.sock.send(buf, copy=True)
        else:
            self.trackers[i] = self.sock.send(buf, copy=False, track=True)

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
        return self.work.check(memoryview(frame if isinstance(frame, bytes) else frame.buffer))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _iox_names(where: Path) -> tuple[str, str]:
    tag = f"sealserve-bench-{where.parent.name}-{where.name}"
    return tag, tag + "-event"


def _iox_services(where: Path, depth: int) -> tuple[Any, Any, Any]:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    data, event = _iox_names(where)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = (
        node.service_builder(iox2.ServiceName.new(data))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(depth)
        .open_or_create()
    )
    events = node.service_builder(iox2.ServiceName.new(event)).event().open_or_create()
    return node, service, events


class IceoryxProducer(Producer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import iceoryx2 as iox2

        super().__init__(size, depth, where)
        self.node, self.service, self.events = _iox_services(where, depth)
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
        t0 = time.perf_counter_ns()
        sample = self.pub.loan_slice_uninit(self.size)
        view = sample.payload().as_memory_view().cast("B")
        self.work.fill(view, seq, t0)
        view.release()
        sample.assume_init().send()
        self.notifier.notify()

    def close(self) -> None:
        for name in ("notifier", "pub", "events", "service", "node"):
            delattr(self, name)


class IceoryxConsumer(Consumer):
    def __init__(self, size: int, depth: int, where: Path) -> None:
        import iceoryx2 as iox2

        super().__init__(size, depth, where)
        _wait_for(where / "iceoryx2.ready")
        self.node, self.service, self.events = _iox_services(where, depth)
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
        view = sample.payload().as_memory_view().cast("B")
        out = self.work.check(view)
        view.release()
        del sample
        return out

    def close(self) -> None:
        for name in ("listener", "sub", "events", "service", "node"):
            delattr(self, name)


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer did not create {path.name}")
        time.sleep(0.002)


def make_producer(transport: str, size: int, depth: int, where: Path, *, queue: Any) -> Producer:
    if transport == "multiprocessing":
        return QueueProducer(size, depth, where, queue=queue)
    if transport == "zmq":
        return ZmqProducer(size, depth, where)
    if transport == "iceoryx2":
        return IceoryxProducer(size, depth, where)
    raise ValueError(f"unknown transport {transport!r}")


def make_consumer(transport: str, size: int, depth: int, where: Path, *, queue: Any) -> Consumer:
    if transport == "multiprocessing":
        return QueueConsumer(size, depth, where, queue=queue)
    if transport == "zmq":
        return ZmqConsumer(size, depth, where)
    if transport == "iceoryx2":
        return IceoryxConsumer(size, depth, where)
    raise ValueError(f"unknown transport {transport!r}")
