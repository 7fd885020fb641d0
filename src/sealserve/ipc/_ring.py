"""The producer's bookkeeping of a channel: allocate, publish in order, reclaim in any order.

:class:`ProducerRing` owns the producer half of the segment and nothing else: no waiting, no
engines, no locks (the publisher holds its lock around every call).  Keeping it apart makes
the invariants easy to state and to test under random interleavings:

* sequence numbers are dense; messages are published in sequence order through the delivery
  queue and ``head`` only grows; ``head <= next_seq``;
* a message holds one descriptor and one arena allocation from ``allocate`` until every
  subscriber in its mask has written the descriptor's current release mark; then both go
  back, whatever the order: a message that is held never holds up the ones after it;
* a descriptor's release mark changes each time it is taken (a 7-bit generation), so a mark
  left from an earlier message never counts for a later one;
* live allocations never overlap; an allocation goes right after the previous one while it
  stays within the first ``window_bytes`` of the arena (the stream walks forward like a
  ring), else back to the start of the arena when that room is free, else right after the
  previous one anyway, else into the first gap that fits: free space is used wherever it
  is.  The window (by default four times the consumer's private cache) is what keeps the
  producer off the lines the consumer is still reading: reusing the same few lines made
  every write of the producer pull them back from the other core (at 64 KiB that cost more
  than the whole message's useful work).

Reclamation is cheap on the common path (in order, from the oldest message, right after a
publication once a few messages are in flight) and complete when it matters: when an
allocation finds no room, every released message is reclaimed, out of order, before the
channel says it is full.
"""

from __future__ import annotations

import bisect
import collections
import struct
import time

from sealserve.ipc import _sys
from sealserve.ipc._layout import (
    ARENA_ALIGN,
    CONSUMER_DEAD,
    CONSUMER_FREE,
    CONSUMER_LEFT,
    CONSUMER_LIVE,
    MARK_SHIFT,
    Geometry,
    W,
    release_pattern,
)
from sealserve.ipc._segment import Segment

__all__ = ["FLAG_ABORTED", "ProducerRing", "Rec", "footprint"]

_DESC = struct.Struct("<5Q")
_BARRIERS = _sys.NEEDS_BARRIERS
_FENCE_ACQUIRE, _FENCE_RELEASE = _sys.FENCE_PAIR
_HEAD = W.HEAD
#: Reclaim at every allocation once this many messages are in flight (or for large ones).
_RECLAIM_BATCH = 4
_EAGER_BYTES = 64 << 10
_ALIGN_MASK = ARENA_ALIGN - 1
#: Descriptor flag: the message's copy failed; subscribers skip it.
FLAG_ABORTED = 1 << 33
#: What a publication's notification did: index ``policy * 3 + outcome`` of
#: ``ProducerRing.notified`` (policy 0: wake, 1: batch; outcomes as in
#: :data:`sealserve.ipc._stats.NOTIFY_OUTCOMES`).
_WOKEN, _COALESCED, _NONE = 0, 1, 2


def footprint(nbytes: int) -> int:
    """The arena bytes a message of ``nbytes`` occupies (whole 64-byte lines)."""
    return (nbytes + _ALIGN_MASK) & ~_ALIGN_MASK


class Rec:
    """One descriptor's current message: its arena allocation, then its publication state.

    There is one per descriptor, reused each time the descriptor is taken (no allocation per
    message); everything is reset by :meth:`ProducerRing.allocate`.
    """

    __slots__ = (
        "desc",
        "done",
        "flags",
        "footprint",
        "length",
        "mark",
        "mask",
        "nbytes",
        "offset",
        "progress",
        "ready",
        "release",
        "seq",
    )

    def __init__(self, desc: int) -> None:
        self.desc = desc
        self.mark = 0x80
        self.offset = 0
        self.nbytes = 0
        self.footprint = 0
        self.seq = -1
        self.mask = 0
        self.length = 0
        self.flags = 0
        self.progress = 0
        self.ready = False
        #: The payload is fully in the arena (its copy or its loan is finished): until then
        #: the message is never reclaimed, even if every subscriber has let go of it.
        self.done = False
        #: ``(mask_lo, marks_lo, mask_hi, marks_hi)``: the mark words once all have released.
        self.release = (0, 0, 0, 0)

    def __repr__(self) -> str:
        return f"Rec(seq={self.seq}, desc={self.desc}, offset={self.offset}, nbytes={self.nbytes})"


class ProducerRing:
    """Allocation, publication and reclamation of one channel's messages."""

    def __init__(
        self, segment: Segment, *, trim_above: int | None, window_bytes: int | None = None
    ) -> None:
        g = segment.geometry
        w = segment.words
        self._seg = segment
        self._w = w
        self._b = segment.bytes
        self.capacity = g.capacity
        self.max_subscribers = g.max_subscribers
        self._cmask = g.capacity - 1
        self._desc_off = g.desc_offset
        self._queue_word = g.queue_offset >> 3
        self._mark_word = (g.desc_offset >> 3) + W.D_MARKS
        self.arena_size = g.arena_size
        #: Allocations walk forward within this many bytes from the arena's start, then wrap.
        self.window_bytes = g.arena_size if window_bytes is None else window_bytes
        if self.window_bytes < 1:
            raise ValueError(f"window_bytes must be >= 1, got {window_bytes!r}")
        self._trim_above = trim_above
        self._data_epoch_address = segment.address + W.DATA_EPOCH * 8
        self._space_epoch_address = segment.address + W.SPACE_EPOCH * 8
        self.next_seq = self.head = self.tail = w[W.HEAD]
        self._pending: collections.deque[Rec] = collections.deque()
        self._inflight: collections.deque[Rec] = collections.deque()
        # Free descriptors as a stack (the most recently freed, hottest one goes first) and
        # each descriptor's generation, which its release mark carries.
        self._free = list(range(g.capacity - 1, -1, -1))
        self._recs = [Rec(i) for i in range(g.capacity)]
        # Live arena allocations, sorted by offset; ``_cursor`` ends the latest one.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._cursor = 0
        self._in_use = 0
        self.wakeups = 0
        #: Notification outcomes by policy (``NOTIFY_OUTCOMES``): plain integers, hot path.
        self.notified = [0] * 6
        #: The data epoch as last written (the producer is its only writer); a sleeping
        #: subscriber's waiting flag is the epoch it read plus one.
        self._epoch = w[W.DATA_EPOCH] & 0xFFFFFFFF
        self.live: list[int] = []
        self.live_mask = 0
        self._waiting_words: list[int] = []
        #: Where the live subscribers write the CPU they last waited on (plus one).
        self.cpu_words: tuple[int, ...] = ()
        # mark -> release words for the current ``live_mask`` (reset when it changes)
        self._releases: dict[int, tuple[int, int, int, int]] = {}
        for slot in range(g.max_subscribers):
            if w[Geometry.consumer_word(slot) + W.C_STATE] == CONSUMER_LIVE:
                self._add_live(slot)

    # -- state ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages submitted and not yet reclaimed."""
        return len(self._inflight) + len(self._pending)

    @property
    def descriptors_in_use(self) -> int:
        """Descriptors taken: messages in flight and open loans."""
        return self.capacity - len(self._free)

    @property
    def arena_in_use(self) -> int:
        return self._in_use

    def allocations(self) -> list[tuple[int, int]]:
        """The live arena allocations as ``(start, end)``, by offset."""
        return list(zip(self._starts, self._ends, strict=True))

    # -- subscribers ---------------------------------------------------------------------------

    def _add_live(self, slot: int) -> None:
        self.live.append(slot)
        self.live_mask |= 1 << slot
        self._live_changed()

    def _live_changed(self) -> None:
        self._waiting_words = [Geometry.consumer_word(s) + W.C_WAITING for s in self.live]
        self.cpu_words = tuple(Geometry.consumer_word(s) + W.C_CPU for s in self.live)
        self._releases = {}

    def attach(self, *, pid: int = 0) -> int | None:
        """Reserve a free subscriber slot starting at the current head, or ``None``."""
        w = self._w
        for slot in range(self.max_subscribers):
            cw = Geometry.consumer_word(slot)
            if w[cw + W.C_STATE] == CONSUMER_FREE:
                break
        else:
            return None
        # No stale mark of an earlier occupant may ever match a message of this one, so the
        # slot's byte is cleared everywhere, except in descriptors still in flight whose
        # mask names the slot: there the earlier occupant's marks (written by ``drop``)
        # are what lets them be reclaimed.
        keep = {rec.desc for rec in self._inflight if rec.mask >> slot & 1}
        b = self._b
        base = self._desc_off + W.D_MARKS_BYTE + slot
        for i in range(self.capacity):
            if i not in keep:
                b[base + 64 * i] = 0
        w[cw + W.C_START] = self.head
        w[cw + W.C_WAITING] = 0
        w[cw + W.C_PID] = pid
        w[cw + W.C_STATE] = CONSUMER_LIVE
        self._add_live(slot)
        return slot

    def drop(self, slot: int) -> int:
        """Forget a subscriber; write the marks it still owed.  Returns how many."""
        if not self.live_mask >> slot & 1:
            return 0
        b = self._b
        released = 0
        for rec in self._inflight:
            if rec.mask >> slot & 1:
                at = self._desc_off + rec.desc * 64 + W.D_MARKS_BYTE + slot
                if b[at] != rec.mark:
                    b[at] = rec.mark
                    released += 1
        self.live.remove(slot)
        self.live_mask &= ~(1 << slot)
        self._live_changed()
        self._w[Geometry.consumer_word(slot) + W.C_STATE] = CONSUMER_FREE
        return released

    def departed_slots(self) -> list[tuple[int, str]]:
        """Subscribers this ring still counts that left or were marked dead."""
        w = self._w
        out: list[tuple[int, str]] = []
        for slot in self.live:
            state = w[Geometry.consumer_word(slot) + W.C_STATE]
            if state == CONSUMER_LEFT:
                out.append((slot, "left"))
            elif state == CONSUMER_DEAD:
                out.append((slot, "died"))
        return out

    # -- allocation ----------------------------------------------------------------------------

    def allocate(self, nbytes: int) -> Rec | None:
        """Take a descriptor and arena room for ``nbytes``, or ``None`` if there is none.

        Released messages are reclaimed in order after each publication once a few are in
        flight (:meth:`submit`, off the critical path) and here before a large message; if
        there is no room, every released message is reclaimed, out of order, and the
        allocation tried again.
        """
        inflight = self._inflight
        if inflight and nbytes >= _EAGER_BYTES:
            self.reclaim()  # large: make room at the start (hot lines) if it is there
        need = (nbytes + _ALIGN_MASK) & ~_ALIGN_MASK
        free = self._free
        offset = self._place(need) if free else -1
        if offset < 0:
            if not inflight:
                return None
            self.reclaim(everything=True)
            offset = self._place(need) if free else -1
            if offset < 0:
                return None
        rec = self._recs[free.pop()]
        rec.mark = ((rec.mark + 1) & 0x7F) | 0x80  # a new generation: stale marks never match
        rec.offset = offset
        rec.nbytes = nbytes
        rec.footprint = need
        rec.seq = -1
        return rec

    def _place(self, need: int) -> int:
        """Arena offset for ``need`` bytes (recorded as live), or -1 if no gap holds them."""
        if not need:
            return 0
        starts = self._starts
        ends = self._ends
        at = self._cursor
        i = bisect.bisect_left(starts, at)
        if not (
            at + need <= self.window_bytes
            and at + need <= self.arena_size
            and (i == 0 or ends[i - 1] <= at)
            and (i == len(starts) or starts[i] >= at + need)
        ):  # not the next stretch of the window: the start, or wherever there is room
            if not starts or starts[0] >= need:
                at = i = 0
            else:
                limit = starts[i] if i < len(starts) else self.arena_size
                if not ((i == 0 or ends[i - 1] <= at) and limit - at >= need):
                    at = -1
                    for i in range(1, len(starts)):  # first fit
                        if starts[i] - ends[i - 1] >= need:
                            at = ends[i - 1]
                            break
                    else:
                        if self.arena_size - ends[-1] >= need:
                            at = ends[-1]
                            i = len(starts)
                    if at < 0:
                        return -1
        starts.insert(i, at)
        ends.insert(i, at + need)
        self._cursor = at + need
        self._in_use += need
        return at

    def _give_back(self, rec: Rec) -> None:
        need = rec.footprint
        if need:
            starts = self._starts
            i = 0 if starts[0] == rec.offset else bisect.bisect_left(starts, rec.offset)
            del starts[i]
            del self._ends[i]
            self._in_use -= need
        self._free.append(rec.desc)

    def free_unpublished(self, rec: Rec) -> None:
        """Give back a loan that is discarded."""
        self._give_back(rec)

    # -- publication ---------------------------------------------------------------------------

    def submit(
        self,
        rec: Rec,
        length: int,
        flags: int,
        progress: int,
        ready: bool,
        batch: bool = False,
    ) -> int:
        """Give ``rec`` its sequence number (returned); publish what can be, wake who waits.

        ``progress == length`` means the payload is complete; otherwise the caller reports
        progress later and marks the message done with :meth:`finish`.  ``batch`` chooses
        the one-wake-up-per-sleep policy (:meth:`notify`).
        """
        seq = rec.seq = self.next_seq
        self.next_seq = seq + 1
        rec.length = length
        rec.flags = flags
        rec.progress = progress
        if progress != length or not ready or self._pending:
            rec.ready = ready
            rec.done = progress == length
            if not ready or self._pending:
                self._pending.append(rec)
                self._advance(batch)
                return seq
            self._publish(rec)
            _sys.release_fence()
            self._w[_HEAD] = self.head
            self.notify(batch)
            return seq
        rec.ready = rec.done = True
        # A complete message published at once: _publish inlined (every message's hot path).
        mask = self.live_mask
        mark = rec.mark
        release = self._releases.get(mark)
        if release is None:
            release = self._release_words(mark)
        rec.mask = mask
        rec.release = release
        desc = rec.desc
        _DESC.pack_into(
            self._b,
            self._desc_off + desc * 64,
            seq + 1,
            rec.offset,
            length,
            progress,
            mask | flags | mark << MARK_SHIFT,
        )
        w = self._w
        w[self._queue_word + (seq & self._cmask)] = desc
        self._inflight.append(rec)
        self.head = seq + 1
        if _BARRIERS:
            _sys.release_fence()
        w[_HEAD] = seq + 1
        _FENCE_ACQUIRE()  # a full fence without a Python-level call
        _FENCE_RELEASE()
        # notify(batch), inlined: a flag is the epoch its reader slept on, plus one
        outcome = _NONE
        for word in self._waiting_words:
            flag = w[word]
            if flag:
                if not batch or flag == self._epoch + 1:
                    self.wake_all()
                    outcome = _WOKEN
                    break
                outcome = _COALESCED
        self.notified[3 + outcome if batch else outcome] += 1
        # Bookkeeping after publication, off the message's critical path: the subscriber
        # is already reading it while the producer reclaims what was released.
        if len(self._inflight) >= _RECLAIM_BATCH:
            self.reclaim()
        return seq

    def _release_words(self, mark: int) -> tuple[int, int, int, int]:
        lo, hi = release_pattern(self.live_mask)
        release = self._releases[mark] = (lo * 0xFF, lo * mark, hi * 0xFF, hi * mark)
        return release

    def mark_ready(self, rec: Rec, batch: bool = False) -> None:
        """An offloaded copy landed; publish it (and whatever waited behind it)."""
        rec.ready = True
        self._advance(batch)

    def finish(self, rec: Rec) -> None:
        """The payload of a submitted message is complete: it may go once it is released.

        Its subscribers may have let go of it already; a producer waiting for room is told.
        """
        rec.done = True
        w = self._w
        _sys.full_fence()
        if w[W.SPACE_WANT]:
            w[W.SPACE_EPOCH] = (w[W.SPACE_EPOCH] + 1) & 0xFFFFFFFF
            _sys.futex_wake(self._space_epoch_address)

    def _advance(self, batch: bool = False) -> None:
        pending = self._pending
        moved = False
        while pending and pending[0].ready:
            self._publish(pending.popleft())
            moved = True
        if moved:
            _sys.release_fence()
            self._w[W.HEAD] = self.head
            self.notify(batch)

    def _publish(self, rec: Rec) -> None:
        seq = rec.seq
        mask = self.live_mask
        mark = rec.mark
        release = self._releases.get(mark)
        if release is None:
            release = self._release_words(mark)
        rec.mask = mask
        rec.release = release
        desc = rec.desc
        _DESC.pack_into(
            self._b,
            self._desc_off + desc * 64,
            seq + 1,
            rec.offset,
            rec.length,
            rec.progress,
            mask | rec.flags | mark << MARK_SHIFT,
        )
        self._w[self._queue_word + (seq & self._cmask)] = desc
        self._inflight.append(rec)
        self.head = seq + 1

    def write_progress(self, rec: Rec, batch: bool = False) -> None:
        """Store ``rec.progress`` (and its flags) if it is published, and wake who waits."""
        if rec.seq < 0 or rec.seq >= self.head:
            return
        d = (self._desc_off >> 3) + rec.desc * 8
        if rec.flags & FLAG_ABORTED:
            self._w[d + W.D_MASK] = rec.mask | rec.flags | rec.mark << MARK_SHIFT
        _sys.release_fence()
        self._w[d + W.D_PROGRESS] = rec.progress
        self.notify(batch)

    def notify(self, batch: bool = False) -> bool:
        """Wake sleeping subscribers, if any; ``True`` if a wake-up was sent.

        A sleeping subscriber's waiting flag is the data epoch it read, plus one.  ``wake``
        (the default) wakes whenever a flag is up.  ``batch`` wakes only a subscriber asleep
        on the current epoch: one whose flag names an older epoch was already sent a
        wake-up (the epoch moved, so its ``futex_wait`` returns at once), and the rest of a
        burst rides on it.  Neither loses a wake-up.
        """
        _sys.full_fence()
        w = self._w
        outcome = _NONE
        for word in self._waiting_words:
            flag = w[word]
            if flag:
                if not batch or flag == self._epoch + 1:
                    self.wake_all()
                    self.notified[3 if batch else 0] += 1
                    return True
                outcome = _COALESCED
        self.notified[3 + outcome if batch else outcome] += 1
        return False

    def wake_flagged(self) -> bool:
        """Wake every subscriber whose waiting flag is up (a flush); ``True`` if one was."""
        _sys.full_fence()
        w = self._w
        for word in self._waiting_words:
            if w[word]:
                self.wake_all()
                return True
        return False

    def wake_all(self) -> None:
        """Bump the data epoch and wake every sleeper (also used on flush and close)."""
        w = self._w
        w[W.PCPU] = _sys.current_cpu() + 1
        w[W.WAKE_STAMP] = time.monotonic_ns()
        self._epoch = epoch = (self._epoch + 1) & 0xFFFFFFFF
        w[W.DATA_EPOCH] = epoch
        _sys.futex_wake(self._data_epoch_address)
        self.wakeups += 1

    def unpublished(self) -> int:
        return len(self._pending)

    # -- reclamation ---------------------------------------------------------------------------

    def reclaim(self, *, everything: bool = False) -> Rec | None:
        """Retire released messages; return the oldest one still held, if any.

        By default only from the oldest message on, up to the first one still held (the
        cheap common case); with ``everything``, released messages behind a held one too.
        A message whose payload is still being written (a pipelined copy, a loan published
        early) counts as held.
        """
        inflight = self._inflight
        w = self._w
        mark_word = self._mark_word
        freed = False
        if inflight:
            starts = self._starts
            ends = self._ends
            free = self._free
            trim = self._trim_above
            while inflight:
                rec = inflight[0]
                mw = mark_word + rec.desc * 8
                mlo, plo, mhi, phi = rec.release
                if (w[mw] & mlo) != plo or (mhi and (w[mw + 1] & mhi) != phi) or not rec.done:
                    break
                inflight.popleft()
                freed = True
                need = rec.footprint
                if need:  # _retire, inlined for the common case: in order, from the front
                    if trim is not None and rec.nbytes >= trim:
                        self._seg.trim(rec.offset, rec.nbytes)
                    i = 0 if starts[0] == rec.offset else bisect.bisect_left(starts, rec.offset)
                    del starts[i]
                    del ends[i]
                    self._in_use -= need
                free.append(rec.desc)
        if everything and len(inflight) > 1:
            held: list[Rec] = []
            for rec in inflight:
                mw = mark_word + rec.desc * 8
                mlo, plo, mhi, phi = rec.release
                if (w[mw] & mlo) != plo or (w[mw + 1] & mhi) != phi or not rec.done:
                    held.append(rec)
                else:
                    self._retire(rec)
            if len(held) < len(inflight):
                inflight.clear()
                inflight.extend(held)
                freed = True
        if freed:
            self.tail = inflight[0].seq if inflight else self.head
            w[W.TAIL] = self.tail
        return inflight[0] if inflight else None

    def close(self) -> None:
        """Stop using the segment (the compiled ring gives its mapping back here)."""

    def _retire(self, rec: Rec) -> None:
        trim = self._trim_above
        if trim is not None and rec.nbytes >= trim:
            self._seg.trim(rec.offset, rec.nbytes)
        self._give_back(rec)
