"""The consuming end of a channel: ``receive`` a :class:`Sample` that views shared memory.

A subscriber reads descriptors in sequence order from its start cursor.  Each one is checked
before use (its tag must carry the expected sequence number, its range must lie inside the
arena) because the producer may be the untrusted side: a corrupt or hostile descriptor is a
:class:`~sealserve.errors.SegmentError`, never an out-of-bounds read.  The payload itself can
still change under a reader while the producer is hostile; callers that need integrity
authenticate it (sealserve only ever puts ciphertext there).
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from sealserve._log import get_logger
from sealserve.errors import ChannelClosed, IPCError, PeerDied, SegmentError
from sealserve.ipc import _core, _sys
from sealserve.ipc._engines import copy_bytes
from sealserve.ipc._layout import (
    CONSUMER_LEFT,
    CONSUMER_LIVE,
    MARK_SHIFT,
    PRODUCER_CLOSED,
    Geometry,
    W,
)
from sealserve.ipc._link import Link, PeerState
from sealserve.ipc._notify import QoS, SpinBudget, wait_on_epoch
from sealserve.ipc._ring import FLAG_ABORTED
from sealserve.ipc._stats import ChannelStats, Counters, snapshot

if TYPE_CHECKING:
    from sealserve.ipc._channel import Channel

__all__ = ["Sample", "Subscriber"]

_log = get_logger(__name__)
_DESC = struct.Struct("<5Q")
_BARRIERS = _sys.NEEDS_BARRIERS
_FENCE_ACQUIRE, _FENCE_RELEASE = _sys.FENCE_PAIR
_HEAD = W.HEAD
_SPACE_WANT = W.SPACE_WANT
_PRODUCER_CPU = (W.PCPU,)
# What the compiled reader's next() found, when it is not a message (its first field).
_NEXT_ABORTED, _NEXT_BAD_QUEUE, _NEXT_BAD_TAG = 1, 2, 3
#: Consumer-side copies move at most this much at a time (well inside a private cache).
_PLACE_CHUNK = 256 << 10
_NO_ARRAY: np.ndarray[Any, Any] = np.zeros(0, np.uint8)


class Sample:
    """One received message, viewed in place in shared memory.

    ``view`` (read-only ``memoryview``) and ``array()`` (numpy) are the shared memory itself;
    they stay valid until ``release()`` (or the end of a ``with`` block), after which the
    producer may reuse the space.  A pipelined message may still be arriving: ``view`` waits
    for all of it, ``chunks()`` yields it piece by piece as it lands.
    """

    # Everything is implemented here; the storage is the subclasses': _PySample on the
    # pure-Python core, _CompiledSample on the compiled one (whose C base overrides ``view``,
    # ``release`` and the with block, and falls back on these for the rare paths).
    if TYPE_CHECKING:  # what the subclasses store
        __slots__ = ("_complete", "_desc", "_mark", "_offset", "_released", "_sub", "nbytes", "seq")
    else:
        __slots__ = ()
    _sub: Subscriber
    seq: int
    _desc: int
    _mark: int
    _offset: int
    nbytes: int
    _complete: bool
    _released: bool

    def _check(self) -> None:
        if self._released or self._sub._closed:
            raise IPCError("sample was released; its memory is no longer yours")
        if not self._complete:
            self.wait()

    @property
    def view(self) -> memoryview:
        """The whole payload as a read-only memoryview (waits for a pipelined message)."""
        sub = self._sub
        if self._released or not self._complete or sub._closed:
            self._check()
        off = self._offset
        return sub._ro[off : off + self.nbytes]

    def array(self, dtype: Any = np.uint8) -> np.ndarray[Any, Any]:
        """The payload as a read-only 1-D numpy array of ``dtype`` (no copy)."""
        sub = self._sub
        if self._released or not self._complete or sub._closed:
            self._check()
        off = self._offset
        n = self.nbytes
        if dtype is np.uint64 and not n & 7:  # offsets are 64-byte aligned
            return sub._arena_u64[off >> 3 : (off + n) >> 3]
        arr = sub._arena_np[off : off + n]
        return arr if dtype is np.uint8 else arr.view(dtype)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        arr = self.array()
        if copy:
            return np.array(arr, dtype=dtype)
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return bytes(self.view)

    def tobytes(self) -> bytes:
        """A private copy of the payload."""
        return bytes(self.view)

    @property
    def ready_bytes(self) -> int:
        """How many leading bytes have landed (``nbytes`` once complete)."""
        if self._complete:
            return self.nbytes
        ready = self._sub._progress(self._desc, self.seq, self.nbytes)
        if ready >= self.nbytes:
            self._complete = True
        return ready

    @property
    def complete(self) -> bool:
        return self.ready_bytes >= self.nbytes

    def wait(self, timeout: float | None = None, *, qos: QoS | str | None = None) -> bool:
        """Wait for a pipelined message to land completely; ``False`` on timeout."""
        return self._wait_for(self.nbytes, timeout, qos)

    def _wait_for(self, nbytes: int, timeout: float | None, qos: QoS | str | None) -> bool:
        if self._complete or self.ready_bytes >= nbytes:
            return True
        return self._sub._wait_progress(self, nbytes, timeout, qos)

    def chunks(self, *, qos: QoS | str | None = None) -> Iterator[memoryview]:
        """Yield the payload in consecutive pieces, each as soon as it has landed."""
        if self._released or self._sub._closed:
            raise IPCError("sample was released; its memory is no longer yours")
        base = self._sub._ro[self._offset : self._offset + self.nbytes]
        pos = 0
        while pos < self.nbytes:
            ready = self.ready_bytes
            if ready <= pos:
                self._wait_for(pos + 1, None, qos)
                continue
            yield base[pos:ready]
            pos = ready

    def copy_into(self, out: Any, *, release: bool = True) -> int:
        """Copy the payload into ``out`` on this (the consumer's) side; returns its length.

        The consumer-side placement path: the copy runs on the core that is about to use the
        data, so it lands in that core's cache, and it follows a pipelined message chunk by
        chunk as it arrives.  The slot is released afterwards (unless ``release=False``), so
        the producer gets its room back before the data is used.
        """
        dst = memoryview(out)
        if dst.readonly or not dst.c_contiguous:
            raise ValueError("out must be a writable, C-contiguous buffer")
        dst = dst.cast("B") if dst.format != "B" or dst.ndim != 1 else dst
        if len(dst) < self.nbytes:
            raise ValueError(f"out holds {len(dst)} bytes; the message has {self.nbytes}")
        pos = 0
        for piece in self.chunks():
            step = len(piece)
            for at in range(0, step, _PLACE_CHUNK):
                end = min(at + _PLACE_CHUNK, step)
                copy_bytes(dst[pos + at : pos + end], piece[at:end])
            pos += step
        if release:
            self.release()
        return self.nbytes

    def release(self) -> None:
        """Hand the slot back to the producer (idempotent)."""
        if self._released:
            return
        self._released = True
        sub = self._sub
        if sub._closed:
            return
        sub._held -= 1
        sub._b[sub._mark_base + self._desc * 64] = self._mark
        _FENCE_ACQUIRE()  # a full fence without a Python-level call
        _FENCE_RELEASE()
        want = sub._w[_SPACE_WANT]
        if want and self.seq + 1 >= want:
            sub._wake_producer()

    @property
    def released(self) -> bool:
        return self._released

    def __enter__(self) -> Sample:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Sample(seq={self.seq}, nbytes={self.nbytes}, {state})"


class _PySample(Sample):
    """A sample of the pure-Python core."""

    __slots__ = ("_complete", "_desc", "_mark", "_offset", "_released", "_sub", "nbytes", "seq")

    def __init__(
        self,
        sub: Subscriber,
        seq: int,
        desc: int,
        mark: int,
        offset: int,
        nbytes: int,
        complete: bool,
    ) -> None:
        self._sub = sub
        self.seq = seq
        self._desc = desc
        self._mark = mark
        self._offset = offset
        self.nbytes = nbytes
        self._complete = complete
        self._released = False


def _compiled_sample_type() -> type[Sample] | None:
    compiled = _core.compiled()
    if compiled is None:  # pragma: no cover - built without a compiler
        return None

    class _CompiledSample(compiled.SampleBase, Sample):  # type: ignore[misc,name-defined]
        """A sample of the compiled core: C storage and hot methods, ``Sample``'s for the rest."""

        __slots__ = ()

    return _CompiledSample


_CompiledSample = _compiled_sample_type()


class Subscriber:
    """One consumer of a channel.  Make it with ``Channel.subscriber()``."""

    def __init__(
        self,
        channel: Channel,
        *,
        slot: int,
        qos: QoS,
        link: Link | None,
        clock: Any,
        on_close: Callable[[Subscriber], None] | None = None,
    ) -> None:
        seg = channel.segment
        g = seg.geometry
        w = seg.words
        self.channel = channel
        self.name = channel.name
        self.slot = slot
        self._qos = qos
        self._link = link
        self._clock = clock
        self._on_close = on_close
        self._seg = seg
        self._w = w
        self._b = seg.bytes
        self._ro = seg.arena.toreadonly()
        self._arena_np = np.frombuffer(self._ro, np.uint8)
        self._arena_u64 = np.frombuffer(self._ro, np.uint64)
        self._geometry = g
        self._cmask = g.capacity - 1
        self._capacity = g.capacity
        self._queue_word = g.queue_offset >> 3
        self._desc_off = g.desc_offset
        self._asize = g.arena_size
        self._cw = Geometry.consumer_word(slot)
        self._mark_base = g.desc_offset + W.D_MARKS_BYTE + slot
        self._bit = 1 << slot
        self._space_epoch_address = seg.address + W.SPACE_EPOCH * 8
        self._counters = Counters()
        self._c_received = self._counters.path("received")
        self._spin = SpinBudget()
        self._closed = False
        self._held = 0
        if w[self._cw + W.C_STATE] != CONSUMER_LIVE:
            raise IPCError(f"subscriber slot {slot} of channel {self.name!r} is not reserved")
        w[self._cw + W.C_PID] = os.getpid()
        self._cursor = w[self._cw + W.C_START]
        #: The compiled core's reads of this slot (``None`` on the pure-Python core).
        self._reader = _core.reader(seg, slot, self._cursor)
        self._reader_wakeups = 0  # the reader's wake-ups already added to the counters
        if self._reader is not None and _CompiledSample is not None:
            self._reader.bind(self._ro, self._c_received, _CompiledSample)

    # -- receiving -----------------------------------------------------------------------------

    def receive(
        self, *, timeout: float | None = None, qos: QoS | str | None = None
    ) -> Sample | None:
        """The next message, or ``None`` if none arrived within ``timeout`` seconds.

        ``timeout=None`` waits until a message arrives, the publisher closes
        (:class:`ChannelClosed`) or dies (:class:`PeerDied`); ``timeout=0`` only looks.
        Messages published before the publisher went away are still delivered first.
        """
        if self._closed:
            raise ChannelClosed(f"subscriber of channel {self.name!r} is closed")
        reader = self._reader
        if reader is not None:
            got = reader.next(self)  # the compiled core makes the sample itself
            if got is not None and type(got) is not tuple:
                return got  # type: ignore[no-any-return]
            return self._receive_compiled(reader, got, timeout, qos)
        w = self._w
        deadline: float | None = None
        while True:
            seq = self._cursor
            if w[_HEAD] <= seq:
                if deadline is None and timeout is not None:
                    deadline = self._clock.monotonic() + timeout
                if not self._wait_data(seq, deadline, qos):
                    return None
            if _BARRIERS:
                _sys.acquire_fence()
            desc = w[self._queue_word + (seq & self._cmask)]
            if desc >= self._capacity:
                raise SegmentError(
                    f"queue entry of message {seq} of channel {self.name!r} is corrupt "
                    f"(descriptor {desc})"
                )
            tag, offset, length, progress, mask = _DESC.unpack_from(
                self._b, self._desc_off + desc * 64
            )
            if tag != seq + 1:
                raise SegmentError(
                    f"descriptor of message {seq} of channel {self.name!r} is corrupt (tag {tag})"
                )
            self._cursor = seq + 1
            if not mask & self._bit:
                continue  # published before this subscriber attached
            mark = (mask >> MARK_SHIFT) & 0xFF
            if mask & FLAG_ABORTED:
                self._mark(seq, desc, mark)  # its copy failed: nothing to deliver
                continue
            if offset + length > self._asize or progress > length:
                raise SegmentError(
                    f"descriptor of message {seq} of channel {self.name!r} points outside the arena"
                )
            self._held += 1
            c = self._c_received
            c[0] += 1
            c[1] += length
            return _PySample(self, seq, desc, mark, offset, length, progress == length)

    def _receive_compiled(
        self, reader: Any, got: Any, timeout: float | None, qos: QoS | str | None
    ) -> Sample | None:
        """``receive`` on the compiled core once the first look found no message (``got``)."""
        deadline: float | None = None
        while True:
            if got is None:
                if deadline is None and timeout is not None:
                    deadline = self._clock.monotonic() + timeout
                if not self._wait_data(reader.cursor, deadline, qos):
                    return None
            elif type(got) is tuple:
                kind, seq, desc, mark, _, _, _ = got
                self._refuse(kind, seq, desc, mark)
            else:
                return got  # type: ignore[no-any-return]
            got = reader.next(self)

    def _refuse(self, kind: int, seq: int, value: int, mark: int) -> None:
        """What the compiled reader found instead of a message (``next()``'s first field)."""
        if kind == _NEXT_ABORTED:
            self._mark(seq, value, mark)  # its copy failed: nothing to deliver
            return
        if kind == _NEXT_BAD_QUEUE:
            raise SegmentError(
                f"queue entry of message {seq} of channel {self.name!r} is corrupt "
                f"(descriptor {value})"
            )
        if kind == _NEXT_BAD_TAG:
            raise SegmentError(
                f"descriptor of message {seq} of channel {self.name!r} is corrupt (tag {value})"
            )
        raise SegmentError(
            f"descriptor of message {seq} of channel {self.name!r} points outside the arena"
        )

    def receive_into(
        self, out: Any, *, timeout: float | None = None, qos: QoS | str | None = None
    ) -> int | None:
        """Receive the next message straight into ``out`` (see :meth:`Sample.copy_into`).

        Returns the message's length, or ``None`` if none arrived within ``timeout``.
        """
        sample = self.receive(timeout=timeout, qos=qos)
        if sample is None:
            return None
        try:
            return sample.copy_into(out)
        finally:
            sample.release()

    def __iter__(self) -> Iterator[Sample]:
        """Samples until the publisher closes."""
        while True:
            try:
                sample = self.receive()
            except ChannelClosed:
                return
            if sample is not None:
                yield sample

    def _wait_data(self, seq: int, deadline: float | None, qos: QoS | str | None) -> bool:
        if deadline is not None and deadline <= self._clock.monotonic():
            return False
        q = self._qos if qos is None else QoS.parse(qos)
        w = self._w

        def ready() -> bool:
            return bool(w[W.HEAD] > seq)

        # Before waiting only what costs no system call (closed, published, closed publisher);
        # the link (a poll of the socket) is checked between blocking slices: a publisher that
        # died is found within a slice, and a wait that ends while spinning pays nothing.
        self._check_publisher(seq, link=False)
        reader = self._reader
        return wait_on_epoch(
            ready,
            words=w,
            address=self._seg.address,
            epoch_word=W.DATA_EPOCH,
            waiting_word=self._cw + W.C_WAITING,
            waiting_value=None,
            stamp_word=W.WAKE_STAMP,
            spin_ns=self._spin.next_spin_ns() if q is QoS.LATENCY else 0,
            deadline=deadline,
            clock=self._clock,
            check=lambda: self._check_publisher(seq),
            budget=self._spin,
            counters=self._counters.waits,
            cpu_word=self._cw + W.C_CPU,
            peer_cpu_words=_PRODUCER_CPU,
            spinner=None if reader is None else lambda ns, share: reader.spin(seq, ns, share),
        )

    def _check_publisher(self, seq: int, *, link: bool = True) -> None:
        """Raise if nothing more can arrive: the publisher closed or (``link``) died."""
        w = self._w
        if self._closed:
            raise ChannelClosed(f"subscriber of channel {self.name!r} is closed")
        if w[W.HEAD] > seq:
            return
        if w[W.PSTATE] == PRODUCER_CLOSED:
            raise ChannelClosed(f"the publisher of channel {self.name!r} closed")
        if link and self._link is not None:
            state = self._link.poll()
            if w[W.HEAD] > seq:
                return
            if state is PeerState.DIED:
                raise PeerDied(f"the publisher of channel {self.name!r} died")
            if state is PeerState.CLOSED:
                raise ChannelClosed(f"the publisher of channel {self.name!r} closed")

    # -- pipelined messages --------------------------------------------------------------------

    def _progress(self, desc: int, seq: int, nbytes: int) -> int:
        if self._closed:
            raise ChannelClosed(f"subscriber of channel {self.name!r} is closed")
        reader = self._reader
        if reader is not None:
            ready, aborted = reader.progress(desc, seq, nbytes)
            if ready == -1:
                raise SegmentError(
                    f"descriptor of message {seq} of channel {self.name!r} was overwritten"
                )
            if ready < 0:
                raise SegmentError(f"descriptor {seq} of channel {self.name!r} is corrupt")
            if aborted:
                raise IPCError(
                    f"message {seq} of channel {self.name!r} was aborted by its producer"
                )
            return int(ready)
        d = (self._desc_off >> 3) + desc * 8
        w = self._w
        if w[d + W.D_TAG] != seq + 1:
            raise SegmentError(
                f"descriptor of message {seq} of channel {self.name!r} was overwritten"
            )
        ready = w[d + W.D_PROGRESS]
        _sys.acquire_fence()
        if ready > nbytes:
            raise SegmentError(f"descriptor {seq} of channel {self.name!r} is corrupt")
        if w[d + W.D_MASK] & FLAG_ABORTED:
            raise IPCError(f"message {seq} of channel {self.name!r} was aborted by its producer")
        return int(ready)

    def _wait_progress(
        self, sample: Sample, nbytes: int, timeout: float | None, qos: QoS | str | None
    ) -> bool:
        q = self._qos if qos is None else QoS.parse(qos)
        deadline = None if timeout is None else self._clock.monotonic() + timeout

        def ready() -> bool:
            return sample.ready_bytes >= nbytes

        def check() -> None:
            if self._w[W.PSTATE] == PRODUCER_CLOSED and not ready():
                raise ChannelClosed(
                    f"the publisher of channel {self.name!r} closed mid-message {sample.seq}"
                )
            if self._link is not None and self._link.poll() is not PeerState.ALIVE and not ready():
                raise PeerDied(
                    f"the publisher of channel {self.name!r} died mid-message {sample.seq}"
                )

        check()
        return wait_on_epoch(
            ready,
            words=self._w,
            address=self._seg.address,
            epoch_word=W.DATA_EPOCH,
            waiting_word=self._cw + W.C_WAITING,
            waiting_value=None,
            stamp_word=W.WAKE_STAMP,
            spin_ns=self._spin.next_spin_ns() if q is QoS.LATENCY else 0,
            deadline=deadline,
            clock=self._clock,
            check=check,
            budget=self._spin,
            counters=self._counters.waits,
            cpu_word=self._cw + W.C_CPU,
            peer_cpu_words=_PRODUCER_CPU,
        )

    # -- release -------------------------------------------------------------------------------

    def _mark(self, seq: int, desc: int, mark: int) -> None:
        """Write this subscriber's release mark for ``seq`` and wake the producer if due."""
        self._b[self._mark_base + desc * 64] = mark
        _sys.full_fence()
        want = self._w[W.SPACE_WANT]
        if want and seq + 1 >= want:
            self._wake_producer()

    def _wake_producer(self) -> None:
        w = self._w
        w[self._cw + W.C_CPU] = _sys.current_cpu() + 1
        w[W.SPACE_STAMP] = time.monotonic_ns()
        w[W.SPACE_EPOCH] = (w[W.SPACE_EPOCH] + 1) & 0xFFFFFFFF
        _sys.futex_wake(self._space_epoch_address)
        self._counters.wakeups_sent += 1

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Samples received and not yet released."""
        reader = self._reader
        return self._held + (reader.held if reader is not None else 0)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def counters(self) -> Counters:
        reader = self._reader
        if reader is not None:  # wake-ups the compiled release sent
            sent = reader.wakeups
            self._counters.wakeups_sent += sent - self._reader_wakeups
            self._reader_wakeups = sent
        return self._counters

    def stats(self) -> ChannelStats:
        """Counters and waits of this subscriber; ``in_flight`` is what it has yet to read."""
        cursor = self._cursor if self._reader is None else self._reader.cursor
        pending = 0 if self._closed else int(self._w[W.HEAD] - cursor)
        return snapshot(
            self.counters,
            channel=self.name,
            role="subscriber",
            closed=self._closed,
            spin_budget_ns=self._spin.budget_ns,
            spin_backoff=self._spin.backing_off,
            wake_ns=self._spin.wake_ns,
            in_flight=pending,
            capacity=self._geometry.capacity,
            arena_bytes_in_use=0,
            arena_bytes=self._asize,
        )

    def close(self) -> None:
        """Leave the channel; the publisher reclaims whatever this subscriber still held."""
        if self._closed:
            return
        w = self._w
        w[self._cw + W.C_STATE] = CONSUMER_LEFT
        self._closed = True
        _sys.full_fence()
        if w[W.SPACE_WANT]:
            self._wake_producer()
        with_held = self.held
        if with_held:
            _log.event("ipc.subscriber.closed_holding", channel=self.name, held=with_held)
        # Let go of our views of the arena so that the segment can unmap when it closes.
        self._arena_np = self._arena_u64 = _NO_ARRAY
        with contextlib.suppress(BufferError):
            self._ro.release()
        if self._reader is not None:
            self._reader.close()
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Subscriber(channel={self.name!r}, slot={self.slot}, state={state!r})"
