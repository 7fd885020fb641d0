"""The producing end of a channel: ``send``, ``send_async``, ``loan`` → ``commit``.

The bookkeeping (allocation, in-order publication, reclamation) lives in
:class:`~sealserve.ipc._ring.ProducerRing`; this module adds what a caller sees: copy paths
chosen by the scheduler, copy engines, waiting for room under a QoS hint, subscriber links
(peer death), counters and stats.  One lock guards the ring, because completion callbacks
arrive on engine threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from sealserve._log import get_logger
from sealserve.errors import (
    BackpressureTimeout,
    ChannelClosed,
    IPCError,
    MessageTooLarge,
    PeerDied,
)
from sealserve.ipc import _core, _sys
from sealserve.ipc._engines import CopyEngine, CopyJob, InlineEngine, copy_bytes
from sealserve.ipc._layout import FLAG_PIPELINED, PRODUCER_CLOSED, PRODUCER_NONE, PRODUCER_OPEN, W
from sealserve.ipc._link import Link, PeerState
from sealserve.ipc._notify import QoS, SpinBudget, wait_on_epoch
from sealserve.ipc._ring import FLAG_ABORTED, ProducerRing, Rec
from sealserve.ipc._scheduler import Decision, Notify, Path, Scheduler
from sealserve.ipc._stats import ChannelStats, Counters, snapshot

if TYPE_CHECKING:
    from sealserve.ipc._channel import Channel

__all__ = ["Completion", "Loan", "Publisher"]

_log = get_logger(__name__)
_TIMED_COPY_MIN = 64 << 10
_INLINE = InlineEngine()
_OPEN, _PUBLISHED, _COMMITTED, _DISCARDED = 0, 1, 2, 3
_NO_ARRAY: np.ndarray[Any, Any] = np.zeros(0, np.uint8)
_NO_VIEW = memoryview(b"")
_STATES = ("open", "published", "committed", "discarded")


class Completion:
    """What became of one ``send``: its sequence number, path, and (if asynchronous) its copy."""

    __slots__ = ("_job", "nbytes", "path", "reason", "seq")

    def __init__(self, seq: int, nbytes: int, decision: Decision, job: CopyJob | None) -> None:
        self.seq = seq
        self.nbytes = nbytes
        self.path = decision.path
        self.reason = decision.reason
        self._job = job

    def done(self) -> bool:
        """Whether the payload is fully in shared memory."""
        return self._job is None or self._job.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the payload is in shared memory (then the source may be reused).

        Raises :class:`BackpressureTimeout` if the copy has not landed within ``timeout``
        seconds, and :class:`IPCError` if it failed.
        """
        job = self._job
        if job is None:
            return
        if not job.wait(timeout):
            raise BackpressureTimeout(f"copy of message {self.seq} still running after {timeout}s")
        if job.error is not None:
            raise IPCError(f"copy of message {self.seq} failed: {job.error!r}") from job.error

    def __repr__(self) -> str:
        return f"Completion(seq={self.seq}, path={self.path.value!r}, done={self.done()})"


class Loan:
    """Arena space lent to the producer: write ``view`` in place, then ``commit()``.

    ``publish(ready)`` makes the message visible before it is complete: subscribers can read
    its first ``ready`` bytes (``Sample.chunks()``) while the rest is still being written.
    As a context manager it commits on success and discards on error.
    """

    # Everything is implemented here; the storage is the subclasses': _PyLoan on the
    # pure-Python core, _CompiledLoan on the compiled one (whose C base overrides ``view``,
    # ``commit`` and the with block, and falls back on these for the rare paths).
    if TYPE_CHECKING:  # what the subclasses store
        __slots__ = ("_batch", "_pub", "_rec", "_state", "_view", "nbytes")
    else:
        __slots__ = ()
    _pub: Publisher
    _rec: Rec
    _batch: bool
    nbytes: int
    _state: int
    _view: memoryview | None

    @property
    def view(self) -> memoryview:
        """The writable shared memory of this loan."""
        if self._state > _PUBLISHED:
            raise IPCError(f"loan is {_STATES[self._state]}; its memory is no longer yours")
        view = self._view
        if view is None:
            off = self._rec.offset
            view = self._view = self._pub._arena[off : off + self.nbytes]
        return view

    def array(self, dtype: Any = np.uint8) -> np.ndarray[Any, Any]:
        """The loan as a writable 1-D numpy array of ``dtype`` (no copy)."""
        if self._state > _PUBLISHED:
            raise IPCError(f"loan is {_STATES[self._state]}; its memory is no longer yours")
        off = self._rec.offset
        n = self.nbytes
        if dtype is np.uint64 and not n & 7:  # offsets are 64-byte aligned
            return self._pub._arena_u64[off >> 3 : (off + n) >> 3]
        arr = self._pub._arena_np[off : off + n]
        return arr if dtype is np.uint8 else arr.view(dtype)

    def publish(self, ready_bytes: int) -> None:
        """Publish the message now with its first ``ready_bytes`` bytes readable."""
        if self._state > _PUBLISHED:
            raise IPCError(f"loan is {_STATES[self._state]}")
        if not 0 <= ready_bytes <= self.nbytes:
            raise ValueError(f"ready_bytes must be within [0, {self.nbytes}], got {ready_bytes!r}")
        self._pub._publish_loan(self, ready_bytes)
        self._state = _PUBLISHED

    def commit(self, nbytes: int | None = None) -> int:
        """Publish the message (its first ``nbytes`` bytes, all by default); returns its seq."""
        state = self._state
        if state > _PUBLISHED:
            raise IPCError(f"loan is {_STATES[state]}")
        if nbytes is None:
            length = self.nbytes
        else:
            length = nbytes
            if not 0 <= length <= self.nbytes:
                raise ValueError(f"nbytes must be within [0, {self.nbytes}], got {nbytes!r}")
            if state == _PUBLISHED and length != self.nbytes:
                raise ValueError("a loan published early commits its full length")
        pub = self._pub
        rec = self._rec
        with pub._lock:
            if pub._closed or pub._error is not None:
                pub._ensure_open()
            if state == _OPEN:
                seq = pub._ring.submit(rec, length, 0, length, True, self._batch)
            else:  # published early: now complete
                seq = rec.seq
                rec.progress = rec.length
                pub._ring.write_progress(rec, self._batch)
                pub._ring.finish(rec)
        c = pub._c_loan
        c[0] += 1
        c[1] += length
        self._state = _COMMITTED
        view = self._view
        if view is not None:  # writes through it would land in a published message
            self._view = None
            try:  # noqa: SIM105 - contextlib.suppress costs a microsecond per message here
                view.release()
            except BufferError:  # an export is alive; it keeps the mapping
                pass
        return seq

    def discard(self) -> None:
        """Give the space back without publishing anything."""
        if self._state == _PUBLISHED:
            raise IPCError("a loan published early cannot be discarded; commit it")
        if self._state != _OPEN:
            return
        self._pub._discard_loan(self)
        self._state = _DISCARDED
        if self._view is not None:
            self._drop_view()

    def _drop_view(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            with contextlib.suppress(BufferError):  # an export is alive; it keeps the mapping
                view.release()

    @property
    def state(self) -> str:
        """``open``, ``published`` (early, still being written), ``committed``, ``discarded``."""
        return _STATES[self._state]

    def __enter__(self) -> Loan:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._state <= _PUBLISHED:
            if exc_type is None or self._state == _PUBLISHED:
                self.commit()
            else:
                self.discard()

    def __repr__(self) -> str:
        return f"Loan(nbytes={self.nbytes}, state={_STATES[self._state]!r})"


class _PyLoan(Loan):
    """A loan of the pure-Python core."""

    __slots__ = ("_batch", "_pub", "_rec", "_state", "_view", "nbytes")

    def __init__(self, pub: Publisher, rec: Rec, batch: bool = False) -> None:
        self._pub = pub
        self._rec = rec
        self._batch = batch
        self.nbytes = rec.nbytes
        self._view = None
        self._state = _OPEN


def _compiled_loan_type() -> type[Loan] | None:
    compiled = _core.compiled()
    if compiled is None:  # pragma: no cover - built without a compiler
        return None

    class _CompiledLoan(compiled.LoanBase, Loan):  # type: ignore[misc,name-defined]
        """A loan of the compiled core: C storage and hot methods, ``Loan``'s for the rest."""

        __slots__ = ()

    return _CompiledLoan


_CompiledLoan = _compiled_loan_type()


class Publisher:
    """The one producer of a channel.  Make it with ``Channel.publisher()``."""

    def __init__(
        self,
        channel: Channel,
        *,
        qos: QoS,
        scheduler: Scheduler,
        engines: list[CopyEngine],
        require_subscriber: bool,
        clock: Any,
        owned_engines: list[CopyEngine] | None = None,
        on_close: Callable[[Publisher], None] | None = None,
    ) -> None:
        seg = channel.segment
        w = seg.words
        if w[W.PSTATE] != PRODUCER_NONE:
            raise IPCError(f"channel {channel.name!r} already has (or had) a publisher")
        self.channel = channel
        self.name = channel.name
        self._qos = qos
        self._scheduler = scheduler
        self._engines = {e.name: e for e in engines}
        self._require_subscriber = require_subscriber
        self._clock = clock
        self._on_close = on_close
        self._owned_engines = list(owned_engines or [])
        self._seg = seg
        self._w = w
        self._arena = seg.arena
        self._arena_np = np.frombuffer(seg.arena, np.uint8)
        self._arena_u64 = np.frombuffer(seg.arena, np.uint64)
        self._asize = seg.geometry.arena_size
        self._ring: ProducerRing = _core.ring_class()(
            seg, trim_above=channel.trim_above, window_bytes=_window_bytes()
        )
        # Loans under the default hint decide their notification from this table (no call
        # and no enum hashing per loan); the tallies reach the scheduler with stats().
        self._loan_batch, self._loan_high = scheduler.loan_table(qos, self._ring.capacity)
        self._loan_tally = [0, 0]  # [wake, batch]
        self._lock = threading.Lock()
        self._counters = Counters()
        self._c_inline = self._counters.path("inline")
        self._c_loan = self._counters.path("loan")
        # The compiled ring lends loans itself (C objects, no Python frame per loan).
        self._lend: Callable[[Publisher, int, bool], Loan | None] | None = None
        self._adopt: Callable[[Publisher, Rec, bool], Loan] | None = None
        compiled = _core.compiled()
        if _CompiledLoan is not None and compiled is not None:
            ring: Any = self._ring
            if isinstance(ring, compiled.ProducerRing):
                ring.bind(self._lock, self._c_loan, self._arena, _CompiledLoan)
                self._lend = ring.lend
                self._adopt = ring.adopt
        self._spin = SpinBudget()
        self._closed = False
        self._error: BaseException | None = None
        self._jobs: set[CopyJob] = set()
        self._links: dict[int, Link] = {}
        self._owned_links: dict[int, Link] = {}
        w[W.PPID] = os.getpid()
        w[W.PSTATE] = PRODUCER_OPEN

    # -- subscribers --------------------------------------------------------------------------

    def attach_slot(self, *, link: Link | None = None, pid: int = 0) -> int:
        """Reserve a subscriber slot that receives every message published from now on."""
        with self._lock:
            self._ensure_open()
            slot = self._ring.attach(pid=pid)
            if slot is None:
                for gone, reason in self._ring.departed_slots():
                    self._drop_slot(gone, reason)
                slot = self._ring.attach(pid=pid)
            if slot is None:
                raise IPCError(
                    f"channel {self.name!r} has all {self._ring.max_subscribers} subscriber "
                    "slots taken"
                )
            if link is not None:
                self._links[slot] = link
            return slot

    def set_link(self, slot: int, link: Link, *, owned: bool = False) -> None:
        """Watch ``link`` to learn when the subscriber in ``slot`` dies.

        An ``owned`` link is closed when that subscriber is dropped or the publisher closes.
        """
        with self._lock:
            self._links[slot] = link
            if owned:
                self._owned_links[slot] = link

    def link_all(self, link: Link) -> None:
        """Watch ``link`` for every subscriber attached now (a point-to-point peer)."""
        with self._lock:
            for slot in self._ring.live:
                self._links[slot] = link

    def detach_slot(self, slot: int) -> None:
        """Release a slot reserved for a peer that never took it."""
        with self._lock:
            self._drop_slot(slot, "refused")

    def _drop_slot(self, slot: int, reason: str) -> None:
        """Forget a subscriber that left or died, reclaiming what it held.  Lock held."""
        if not self._ring.live_mask >> slot & 1:
            return
        released = self._ring.drop(slot)
        self._links.pop(slot, None)
        owned = self._owned_links.pop(slot, None)
        if owned is not None:
            owned.close()
        self._counters.count_reclaimed(reason, released)
        _log.event(
            "ipc.subscriber.dropped",
            channel=self.name,
            slot=slot,
            reason=reason,
            reclaimed=released,
        )
        if self._require_subscriber and not self._ring.live_mask and self._error is None:
            self._unbind()  # loans stop committing in C: the Python half raises the error
            self._error = (
                PeerDied(f"the subscriber of channel {self.name!r} died; its slots were reclaimed")
                if reason == "died"
                else ChannelClosed(f"the subscriber of channel {self.name!r} closed")
            )

    def check_peers(self) -> None:
        """Poll the subscribers' links; forget (and reclaim) the ones that died or left."""
        with self._lock:
            for slot, link in list(self._links.items()):
                state = link.poll()
                if state is PeerState.DIED:
                    self._drop_slot(slot, "died")
                elif state is PeerState.CLOSED:
                    self._drop_slot(slot, "left")
            self._reclaim()
        if self._error is not None:
            raise self._error

    def _reclaim(self, *, everything: bool = True) -> None:
        """Reclaim, dropping subscribers that left or died while holding messages.  Locked.

        ``everything=False`` only retires messages in order from the oldest (cheap, for a
        look at occupancy on the hot path).
        """
        ring = self._ring
        while True:
            blocked = ring.reclaim(everything=everything)
            if blocked is None:
                return
            gone = [(s, why) for s, why in ring.departed_slots() if blocked.mask >> s & 1]
            if not gone and everything:
                gone = ring.departed_slots()
            if not gone:
                return
            for slot, reason in gone:
                self._drop_slot(slot, reason)

    @property
    def subscribers(self) -> int:
        """Subscribers currently attached."""
        return len(self._ring.live)

    # -- sending -------------------------------------------------------------------------------

    def send(
        self, data: Any, *, qos: QoS | str | None = None, timeout: float | None = None
    ) -> Completion:
        """Copy ``data`` (any contiguous bytes-like) into the channel and publish it.

        Returns once ``data`` may be reused.  Waits up to ``timeout`` seconds for room
        (``None``: as long as it takes) and raises :class:`BackpressureTimeout` after that.
        A :class:`Loan` of this publisher is published without a copy.
        """
        return self._send(data, qos, timeout, False)

    def send_async(
        self, data: Any, *, qos: QoS | str | None = None, timeout: float | None = None
    ) -> Completion:
        """Like :meth:`send`, but may return while ``data`` is still being copied.

        ``data`` must stay unchanged until ``completion.wait()`` returns.
        """
        return self._send(data, qos, timeout, True)

    def _send(
        self, data: Any, qos: QoS | str | None, timeout: float | None, asynchronous: bool
    ) -> Completion:
        q = self._qos if qos is None else QoS.parse(qos)
        if isinstance(data, Loan):
            return self._send_loan(data, q)
        src = _byte_view(data)
        n = len(src)
        if n > self._asize:
            raise MessageTooLarge(
                f"message of {n} bytes exceeds the {self._asize}-byte arena of channel "
                f"{self.name!r}; create the channel with a larger arena_bytes"
            )
        sched = self._scheduler
        if n < sched.small_bytes:
            decision = sched.decide(nbytes=n, qos=q)
        else:
            now_ns = time.perf_counter_ns()  # the learner times sends from start to start
            with self._lock:
                self._reclaim(everything=False)
            decision = sched.decide(
                nbytes=n,
                qos=q,
                occupancy=self._ring.in_flight / self._ring.capacity,
                asynchronous=asynchronous,
                backlog={name: e.backlog_bytes() for name, e in self._engines.items()},
                now_ns=now_ns,
            )
        rec = self._allocate(n, q, timeout)
        dst = self._arena[rec.offset : rec.offset + n]
        path = decision.path
        batch = decision.notify is Notify.BATCH
        if path is Path.INLINE:
            if n >= _TIMED_COPY_MIN:
                t0 = time.perf_counter()
                copy_bytes(dst, src)
                sched.observe_copy("inline", nbytes=n, seconds=time.perf_counter() - t0)
            else:
                dst[:] = src
            with self._lock:
                self._ensure_open()
                seq = self._ring.submit(rec, n, 0, n, True, batch)
            c = self._c_inline
            c[0] += 1
            c[1] += n
            return Completion(seq, n, decision, None)
        engine = self._engines.get(decision.engine, _INLINE)
        pipelined = path is Path.PIPELINED
        with self._lock:
            self._ensure_open()
            seq = self._ring.submit(rec, n, FLAG_PIPELINED if pipelined else 0, 0, pipelined, batch)
        job = engine.submit(
            src,
            dst,
            chunk_bytes=decision.chunk_bytes if pipelined else 0,
            on_chunk=(lambda pos: self._progress(rec, pos, batch)) if pipelined else None,
            on_done=lambda j: self._copied(rec, j, path.value, batch),
        )
        if not job.done():
            with self._lock:
                if not job.done():
                    self._jobs.add(job)
        completion = Completion(seq, n, decision, job)
        if not asynchronous:
            completion.wait()
        return completion

    def _copied(self, rec: Rec, job: CopyJob, path: str, batch: bool) -> None:
        """A copy finished (engine thread or caller): publish, learn, count."""
        if job.engine != "inline":
            self._counters.observe_offload(job.engine, (job.finished_ns - job.submitted_ns) / 1e9)
        if job.error is None:
            self._scheduler.observe_copy(
                job.engine, nbytes=job.nbytes, seconds=job.copy_s, queued_s=job.queued_s
            )
        with self._lock:
            self._jobs.discard(job)
            if job.error is not None:
                rec.flags |= FLAG_ABORTED
            rec.progress = rec.length
            if rec.ready:
                self._ring.write_progress(rec, batch)
            else:
                self._ring.mark_ready(rec, batch)
            self._counters.count(path, rec.length)
            self._ring.finish(rec)  # last: once released, the message may go (and rec be reused)

    def _progress(self, rec: Rec, pos: int, batch: bool) -> None:
        t0 = time.perf_counter()
        with self._lock:
            rec.progress = pos
            self._ring.write_progress(rec, batch)
        self._scheduler.observe_chunk(time.perf_counter() - t0)

    # -- loans ---------------------------------------------------------------------------------

    def loan(
        self, nbytes: int, *, qos: QoS | str | None = None, timeout: float | None = None
    ) -> Loan:
        """Lend ``nbytes`` of the arena to write in place; ``commit()`` publishes them.

        The scheduler picks how the commit wakes a sleeping reader (``qos`` and occupancy).
        """
        if type(nbytes) is not int or not 0 <= nbytes <= self._asize:
            nbytes = self._check_loan_size(nbytes)
        ring = self._ring
        if qos is None:
            q = self._qos
            batch = self._loan_batch[ring.in_flight >= self._loan_high]
            self._loan_tally[batch] += 1
        else:
            q = QoS.parse(qos)
            batch = self._scheduler.notify_for(q, ring.in_flight / ring.capacity) is Notify.BATCH
        lend = self._lend
        with self._lock:
            if self._closed or self._error is not None:
                self._ensure_open()
            if lend is not None:
                loan = lend(self, nbytes, batch)
                if loan is not None:
                    return loan
                rec = None
            else:
                rec = ring.allocate(nbytes)
        if rec is None:
            rec = self._allocate(nbytes, q, timeout)
        if self._adopt is not None:
            return self._adopt(self, rec, batch)
        return _PyLoan(self, rec, batch)

    def _check_loan_size(self, nbytes: object) -> int:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"nbytes must be an int, got {type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        if nbytes > self._asize:
            raise MessageTooLarge(
                f"loan of {nbytes} bytes exceeds the {self._asize}-byte arena of channel "
                f"{self.name!r}; create the channel with a larger arena_bytes"
            )
        return int(nbytes)

    def _send_loan(self, loan: Loan, qos: QoS) -> Completion:
        if loan._pub is not self:
            raise ValueError("that loan belongs to another publisher")
        decision = self._scheduler.decide(nbytes=loan.nbytes, qos=qos, in_arena=True)
        seq = loan.commit()
        return Completion(seq, loan.nbytes, decision, None)

    def _publish_loan(self, loan: Loan, ready: int) -> None:
        rec = loan._rec
        with self._lock:
            self._ensure_open()
            if rec.seq < 0:
                self._ring.submit(rec, rec.nbytes, FLAG_PIPELINED, ready, True, loan._batch)
            else:
                if ready < rec.progress:
                    raise ValueError(f"ready_bytes went backwards: {ready} < {rec.progress}")
                rec.progress = ready
                self._ring.write_progress(rec, loan._batch)

    def _discard_loan(self, loan: Loan) -> None:
        with self._lock:
            self._ring.free_unpublished(loan._rec)

    # -- room ----------------------------------------------------------------------------------

    def _allocate(self, n: int, qos: QoS, timeout: float | None) -> Rec:
        with self._lock:
            if self._closed or self._error is not None:
                self._ensure_open()
            rec = self._ring.allocate(n)
            if rec is None:
                self._reclaim()
                rec = self._ring.allocate(n)
        if rec is not None:
            return rec
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        return self._wait_room(n, qos, deadline)

    def _wait_room(self, n: int, qos: QoS, deadline: float | None) -> Rec:
        got: list[Rec] = []

        def ready() -> bool:
            with self._lock:
                if self._error is not None or self._closed:
                    return True
                self._reclaim()
                rec = self._ring.allocate(n)
            if rec is None:
                return False
            got.append(rec)
            return True

        while True:
            ring = self._ring
            batch = max(1, ring.in_flight // 2) if qos is QoS.THROUGHPUT else 1
            ok = wait_on_epoch(
                ready,
                words=self._w,
                address=self._seg.address,
                epoch_word=W.SPACE_EPOCH,
                waiting_word=W.SPACE_WANT,
                waiting_value=ring.tail + batch,
                stamp_word=W.SPACE_STAMP,
                spin_ns=self._spin.next_spin_ns() if qos is QoS.LATENCY else 0,
                deadline=deadline,
                clock=self._clock,
                check=self.check_peers,
                budget=self._spin,
                counters=self._counters.waits,
                cpu_word=W.PCPU,
                peer_cpu_words=ring.cpu_words,
            )
            if got:
                return got[0]
            self._ensure_open()
            if not ok:
                raise BackpressureTimeout(
                    f"channel {self.name!r} stayed full: no room for {n} bytes "
                    f"({ring.descriptors_in_use} of {ring.capacity} descriptors and "
                    f"{ring.arena_in_use} of {self._asize} arena bytes in use)"
                )

    # -- lifecycle -----------------------------------------------------------------------------

    def _unbind(self) -> None:
        """The compiled ring stops lending and committing by itself (lock held)."""
        if self._lend is not None:
            ring: Any = self._ring
            ring.unbind()

    def _ensure_open(self) -> None:
        if self._closed:
            raise ChannelClosed(f"publisher of channel {self.name!r} is closed")
        if self._error is not None:
            raise self._error

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every asynchronous copy submitted so far has landed.

        Then wake every reader whose waiting flag is up, whatever the notification policy:
        after a flush no reader sleeps while a message waits for it.
        """
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            remaining = None if deadline is None else max(deadline - self._clock.monotonic(), 0)
            if not job.wait(remaining):
                raise BackpressureTimeout(
                    f"copies into channel {self.name!r} still in flight after {timeout}s"
                )
        with self._lock:
            if not self._closed:
                self._ring.wake_flagged()

    def stats(self) -> ChannelStats:
        """Counters, waits, occupancy, and the scheduler's model and decisions."""
        with self._lock:
            in_flight = self._ring.in_flight
            in_use = self._ring.arena_in_use
        return snapshot(
            self.counters,
            channel=self.name,
            role="publisher",
            closed=self._closed,
            spin_budget_ns=self._spin.budget_ns,
            spin_backoff=self._spin.backing_off,
            wake_ns=self._spin.wake_ns,
            in_flight=in_flight,
            capacity=self._ring.capacity,
            arena_bytes_in_use=in_use,
            arena_bytes=self._asize,
            scheduler=self._scheduler_snapshot(),
        )

    def _scheduler_snapshot(self) -> dict[str, Any]:
        tally = self._loan_tally
        wake, batch = tally
        tally[0] = tally[1] = 0
        self._scheduler.count_notify(wake=wake, batch=batch)
        return self._scheduler.snapshot()

    @property
    def counters(self) -> Counters:
        self._counters.wakeups_sent = self._ring.wakeups
        self._counters.notified = self._ring.notified
        return self._counters

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Finish in-flight copies, tell the subscribers, and let go of the channel."""
        if self._closed:
            return
        try:
            self.flush(timeout=5.0)
        except BackpressureTimeout:
            _log.event("ipc.publisher.closed_with_copies_in_flight", channel=self.name)
        with self._lock:
            self._closed = True
            self._unbind()
            self._w[W.PSTATE] = PRODUCER_CLOSED
            _sys.full_fence()
            self._ring.wake_all()
            links, self._owned_links = list(self._owned_links.values()), {}
        for engine in self._owned_engines:
            engine.close()
        for link in links:
            link.close()
        # Let go of our views of the arena so that the segment can unmap when it closes.
        self._arena_np = self._arena_u64 = _NO_ARRAY
        self._arena = _NO_VIEW
        with self._lock:
            self._ring.close()
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Publisher(channel={self.name!r}, state={state!r}, subscribers={self.subscribers})"


_WINDOW: list[int] = []


def _window_bytes() -> int:
    """How far allocations walk before wrapping: four times the consumer's private cache.

    Far enough that the lines the producer writes next have left the consumer's cache (it
    read them a window ago), so a write never pulls lines back from the other core.
    """
    if not _WINDOW:
        _WINDOW.append(4 * _sys.consumer_cache_bytes())
    return _WINDOW[0]


def _byte_view(data: Any) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError("data must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view
