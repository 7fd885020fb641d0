"""Copy engines: inline and the helper-thread software DMA engine, with completion records."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from sealserve.errors import IPCError
from sealserve.ipc import (
    Channel,
    ChannelOptions,
    CopyEngine,
    CopyJob,
    InlineEngine,
    Path,
    ThreadEngine,
)
from sealserve.ipc._engines import copy_bytes


def _buffers(n: int) -> tuple[memoryview, memoryview, np.ndarray]:  # type: ignore[type-arg]
    src = np.random.default_rng(1).integers(0, 255, n, dtype=np.uint8)
    dst = bytearray(n)
    return memoryview(src), memoryview(dst), src


@pytest.mark.parametrize("n", [0, 10, 40 << 10, 3 << 20])
def test_copy_bytes_copies_exactly(n: int) -> None:
    src, dst, ref = _buffers(n)
    copy_bytes(dst, src)
    assert bytes(dst) == ref.tobytes()


def test_inline_engine_finishes_before_returning() -> None:
    engine = InlineEngine()
    assert isinstance(engine, CopyEngine)
    src, dst, ref = _buffers(1 << 20)
    seen: list[int] = []
    job = engine.submit(src, dst, chunk_bytes=256 << 10, on_chunk=seen.append)
    assert job.done()
    assert job.wait(timeout=0)
    assert bytes(dst) == ref.tobytes()
    assert seen == [256 << 10, 512 << 10, 768 << 10, 1 << 20]
    assert job.copy_s >= 0
    assert engine.backlog_bytes() == 0


def test_thread_engine_copies_in_order_and_reports_completion() -> None:
    with ThreadEngine(name="dma") as engine:
        assert isinstance(engine, CopyEngine)
        jobs = []
        order: list[int] = []
        refs = []
        for i in range(5):
            src, dst, ref = _buffers(200_000 + i)
            refs.append((dst, ref))
            jobs.append(
                engine.submit(
                    src, dst, chunk_bytes=64 << 10, on_done=lambda j, i=i: order.append(i)
                )
            )
        for job in jobs:
            assert job.wait(timeout=10)
        assert order == [0, 1, 2, 3, 4]
        for dst, ref in refs:
            assert bytes(dst) == ref.tobytes()
        assert all(j.engine == "dma" and j.error is None and j.nbytes > 0 for j in jobs)
        assert all(j.started_ns >= j.submitted_ns and j.finished_ns >= j.started_ns for j in jobs)
        assert engine.backlog_bytes() == 0


def test_a_failing_copy_is_recorded_not_raised() -> None:
    with ThreadEngine() as engine:
        src, dst, _ = _buffers(1000)
        failed = threading.Event()

        def boom(_pos: int) -> None:
            raise RuntimeError("callback broke")

        job = engine.submit(
            src, dst, chunk_bytes=100, on_chunk=boom, on_done=lambda j: failed.set()
        )
        assert job.wait(timeout=10)
        assert failed.is_set()
        assert isinstance(job.error, RuntimeError)


def test_engines_refuse_mismatched_lengths_and_work_after_close() -> None:
    engine = ThreadEngine()
    src, _, _ = _buffers(10)
    with pytest.raises(ValueError, match="differ in length"):
        engine.submit(src, memoryview(bytearray(11)))
    engine.close()
    with pytest.raises(IPCError, match="closed"):
        engine.submit(src, memoryview(bytearray(10)))
    with pytest.raises(ValueError, match="name"):
        ThreadEngine(name="")


class MemoryviewDevice:
    """A fake copy accelerator: copies with memoryview slices, done by the time submit returns."""

    name = "fake-dsa"
    asynchronous = True
    kind = "device"

    def __init__(self) -> None:
        self.jobs = 0

    def submit(
        self,
        src: memoryview,
        dst: memoryview,
        *,
        chunk_bytes: int = 0,
        on_chunk: Callable[[int], None] | None = None,
        on_done: Callable[[CopyJob], None] | None = None,
    ) -> CopyJob:
        job = CopyJob(
            engine=self.name,
            src=src,
            dst=dst,
            chunk_bytes=chunk_bytes,
            on_chunk=on_chunk,
            on_done=on_done,
        )
        job.started_ns = time.monotonic_ns()
        n = len(src)
        step = chunk_bytes or n or 1
        for pos in range(0, n, step):
            end = min(pos + step, n)
            dst[pos:end] = src[pos:end]
            job.copied = end
            if on_chunk is not None:
                on_chunk(end)
        job.src = job.dst = None
        job.finished_ns = time.monotonic_ns()
        self.jobs += 1
        if on_done is not None:
            on_done(job)
        return job

    def backlog_bytes(self) -> int:
        return 0

    def close(self) -> None:
        return None


def test_a_device_engine_registers_through_the_publisher_and_is_preferred() -> None:
    device = MemoryviewDevice()
    assert isinstance(device, CopyEngine)
    opts = ChannelOptions(capacity=8, arena_bytes=8 << 20, memory="anonymous")
    with ThreadEngine() as thread, Channel.create(opts) as ch:
        pub = ch.publisher(qos="throughput", engines=[thread, device])
        sub = ch.subscriber()
        model = pub.stats().scheduler
        assert model is not None
        assert model["model"]["fake-dsa"]["kind"] == "device"
        assert model["model"]["thread"]["kind"] == "thread"
        payload = np.random.default_rng(3).integers(0, 255, 4 << 20, dtype=np.uint8)
        done = pub.send_async(payload)
        done.wait(timeout=5.0)
        assert (done.path, device.jobs) == (Path.OFFLOAD, 1)
        sample = sub.receive(timeout=5.0)
        assert sample is not None
        assert np.array_equal(sample.array(), payload)
        sample.release()
        assert pub.stats().offload["fake-dsa"]["count"] == 1


def test_an_engine_without_the_protocol_is_refused_by_name() -> None:
    class NoKind:
        name = "half"
        asynchronous = True

    assert not isinstance(NoKind(), CopyEngine)
    with (
        Channel.create(ChannelOptions(memory="anonymous")) as ch,
        pytest.raises(TypeError, match="engines must implement CopyEngine"),
    ):
        ch.publisher(engines=[NoKind()])  # type: ignore[list-item]
