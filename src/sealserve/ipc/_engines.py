"""Copy engines: who moves the bytes of a ``send`` into shared memory.

Every engine implements :class:`CopyEngine` and reports through :class:`CopyJob`, a
completion record: when the job was submitted, started and finished, how many bytes moved,
and the error if one happened.  The scheduler (:mod:`sealserve.ipc._scheduler`) learns each
engine's cost from these records; the publisher turns them into descriptors.

``InlineEngine``  copies in the caller's thread (numpy releases the GIL for large copies);
``ThreadEngine``  a software DMA engine: a helper thread takes jobs from a FIFO, copies them
                  chunk by chunk and calls ``on_chunk`` after each chunk so that a pipelined
                  message becomes readable while its tail is still moving.

A device engine (an on-chip copy accelerator such as Intel DSA, where one exists) joins by
implementing the same protocol with ``kind = "device"``: ``Channel.publisher(engines=[...])``
registers it with the scheduler under that kind, and the scheduler prefers it for offloads.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from sealserve._log import get_logger
from sealserve.errors import IPCError

__all__ = ["CopyEngine", "CopyJob", "InlineEngine", "ThreadEngine", "copy_bytes"]

_log = get_logger(__name__)

#: Below this size a memoryview assignment beats building numpy arrays (measured: ~1 us).
_NUMPY_MIN = 32 << 10

ChunkCallback = Callable[[int], None]
DoneCallback = Callable[["CopyJob"], None]


def copy_bytes(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src`` for byte views of equal length, releasing the GIL when it pays."""
    n = len(src)
    if n < _NUMPY_MIN:
        dst[:n] = src
    else:
        np.copyto(np.frombuffer(dst, np.uint8, n), np.frombuffer(src, np.uint8, n))


class CopyJob:
    """A completion record: one copy submitted to an engine."""

    __slots__ = (
        "_event",
        "chunk_bytes",
        "copied",
        "dst",
        "engine",
        "error",
        "finished_ns",
        "nbytes",
        "on_chunk",
        "on_done",
        "src",
        "started_ns",
        "submitted_ns",
    )

    def __init__(
        self,
        *,
        engine: str,
        src: memoryview,
        dst: memoryview,
        chunk_bytes: int,
        on_chunk: ChunkCallback | None,
        on_done: DoneCallback | None,
    ) -> None:
        self.engine = engine
        self.src: memoryview | None = src
        self.dst: memoryview | None = dst
        self.nbytes = len(src)
        self.chunk_bytes = chunk_bytes
        self.on_chunk = on_chunk
        self.on_done = on_done
        self.copied = 0
        self.submitted_ns = time.monotonic_ns()
        self.started_ns = 0
        self.finished_ns = 0
        self.error: BaseException | None = None
        self._event: threading.Event | None = None

    def done(self) -> bool:
        """Whether the copy finished and its ``on_done`` callback ran."""
        event = self._event
        return event.is_set() if event is not None else self.finished_ns != 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the copy finished; ``False`` if ``timeout`` passed first."""
        event = self._event
        if event is None:
            return self.finished_ns != 0
        return event.wait(timeout)

    @property
    def queued_s(self) -> float:
        """Seconds between submission and the engine starting on it."""
        return max(self.started_ns - self.submitted_ns, 0) / 1e9 if self.started_ns else 0.0

    @property
    def copy_s(self) -> float:
        """Seconds the engine spent copying."""
        if not self.finished_ns or not self.started_ns:
            return 0.0
        return max(self.finished_ns - self.started_ns, 0) / 1e9

    def run(self) -> None:
        """Copy, chunk by chunk, then mark done; errors are recorded, not raised."""
        self.started_ns = time.monotonic_ns()
        src, dst = self.src, self.dst
        try:
            if src is None or dst is None:
                raise IPCError("copy job ran twice")
            n = self.nbytes
            step = self.chunk_bytes if self.chunk_bytes > 0 else n
            pos = 0
            while pos < n:
                end = min(pos + step, n)
                copy_bytes(dst[pos:end], src[pos:end])
                pos = end
                self.copied = pos
                if self.on_chunk is not None:
                    self.on_chunk(pos)
        except BaseException as exc:
            self.error = exc
        finally:
            self.src = self.dst = None
            self.finished_ns = time.monotonic_ns()
            if self.on_done is not None:
                self.on_done(self)
            if self._event is not None:
                self._event.set()


@runtime_checkable
class CopyEngine(Protocol):
    """Moves bytes from a private buffer into shared memory."""

    #: Short name used in decisions, stats and metric labels.
    name: str
    #: ``True`` when ``submit`` returns before the copy is done.
    asynchronous: bool
    #: ``"inline"`` (the caller's thread), ``"thread"`` (a helper thread) or ``"device"``
    #: (a copy accelerator): how the scheduler models it (a device is preferred for offloads).
    kind: str

    def submit(
        self,
        src: memoryview,
        dst: memoryview,
        *,
        chunk_bytes: int = 0,
        on_chunk: ChunkCallback | None = None,
        on_done: DoneCallback | None = None,
    ) -> CopyJob:
        """Start copying ``src`` into ``dst`` (equal lengths) and return its record."""
        ...

    def backlog_bytes(self) -> int:
        """Bytes submitted and not yet copied."""
        ...

    def close(self) -> None:
        """Finish queued jobs and stop."""
        ...


class InlineEngine:
    """Copies in the caller's thread; ``submit`` returns a finished record."""

    name = "inline"
    asynchronous = False
    kind = "inline"

    def submit(
        self,
        src: memoryview,
        dst: memoryview,
        *,
        chunk_bytes: int = 0,
        on_chunk: ChunkCallback | None = None,
        on_done: DoneCallback | None = None,
    ) -> CopyJob:
        _check_lengths(src, dst)
        job = CopyJob(
            engine=self.name,
            src=src,
            dst=dst,
            chunk_bytes=chunk_bytes,
            on_chunk=on_chunk,
            on_done=on_done,
        )
        job.run()
        return job

    def backlog_bytes(self) -> int:
        return 0

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "InlineEngine()"


class ThreadEngine:
    """A software DMA engine: one helper thread copying jobs in submission order.

    Start it with ``with ThreadEngine() as engine`` or :meth:`start`; :meth:`close` finishes
    the queued jobs and joins the thread.
    """

    asynchronous = True
    kind = "thread"

    def __init__(self, *, name: str = "thread") -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self._jobs: collections.deque[CopyJob] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._backlog = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> ThreadEngine:
        with self._cond:
            if self._closed:
                raise IPCError("copy engine is closed")
            if self._thread is None:
                self._start_locked()
        return self

    def submit(
        self,
        src: memoryview,
        dst: memoryview,
        *,
        chunk_bytes: int = 0,
        on_chunk: ChunkCallback | None = None,
        on_done: DoneCallback | None = None,
    ) -> CopyJob:
        _check_lengths(src, dst)
        job = CopyJob(
            engine=self.name,
            src=src,
            dst=dst,
            chunk_bytes=chunk_bytes,
            on_chunk=on_chunk,
            on_done=on_done,
        )
        job._event = threading.Event()
        with self._cond:
            if self._closed:
                raise IPCError("copy engine is closed")
            if self._thread is None:
                self._start_locked()
            self._jobs.append(job)
            self._backlog += job.nbytes
            self._cond.notify()
        return job

    def _start_locked(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"sealserve-ipc-{self.name}", daemon=True
        )
        self._thread.start()

    def backlog_bytes(self) -> int:
        return self._backlog

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            job.run()
            if job.error is not None:
                _log.event("ipc.engine.copy_failed", engine=self.name, error=repr(job.error))
            with self._cond:
                self._backlog -= job.nbytes

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> ThreadEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ThreadEngine(name={self.name!r}, backlog_bytes={self._backlog})"


def _check_lengths(src: memoryview, dst: memoryview) -> None:
    if len(src) != len(dst):
        raise ValueError(f"src and dst differ in length: {len(src)} != {len(dst)}")
