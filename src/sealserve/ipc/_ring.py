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
* live allocations never overlap; an allocation goes to the start of the arena when that
  room is free (a channel that keeps up reuses the same few hot lines), else right after
  the previous allocation (a stream walks forward like a ring), else into the first gap
  that fits: free space is used wherever it is.

Reclamation is cheap on the common path (in order, from the oldest message, every few
allocations) and complete when it matters: when an allocation finds no room, every released
message is reclaimed, out of order, before the channel says it is full.
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
#: Reclaim at every allocation once this many messages are in flight (or for large ones).
_RECLAIM_BATCH = 4
_EAGER_BYTES = 64 << 10
_ALIGN_MASK = ARENA_ALIGN - 1
#: Descriptor flag: the message's copy failed; subscribers skip it.
FLAG_ABORTED = 1 << 33


def footprint(nbytes: int) -> int:
    """The arena bytes a message of ``nbytes`` occupies (whole 64-byte lines)."""
    return (nbytes + _ALIGN_MASK) & ~_ALIGN_MASK


class Rec:
    """One message: its descriptor and arena allocation, then its publication state."""

    __slots__ = (
        "desc",
        "flags",
        "footprint",
        "length",
        "mark",
        "mask",
        "mhi",
        "mlo",
        "nbytes",
        "offset",
        "phi",
        "plo",
        "progress",
        "ready",
        "seq",
    )
    # set by submit()
    length: int
    flags: int
    progress: int
    ready: bool
    # set when published
    mlo: int
    mhi: int
    plo: int
    phi: int

    def __init__(self, desc: int, mark: int, offset: int, nbytes: int, need: int) -> None:
        self.desc = desc
        self.mark = mark
        self.offset = offset
        self.nbytes = nbytes
        self.footprint = need
        self.seq = -1
        self.mask = 0

    def __repr__(self) -> str:
        return f"Rec(seq={self.seq}, desc={self.desc}, offset={self.offset}, nbytes={self.nbytes})"


class ProducerRing:
    """Allocation, publication and reclamation of one channel's messages."""

    def __init__(self, segment: Segment, *, trim_above: int | None) -> None:
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
        self._trim_above = trim_above
        self._data_epoch_address = segment.address + W.DATA_EPOCH * 8
        self.next_seq = self.head = self.tail = w[W.HEAD]
        self.reserved = 0
        self._pending: collections.deque[Rec] = collections.deque()
        self._inflight: collections.deque[Rec] = collections.deque()
        # Free descriptors as a stack (the most recently freed, hottest one goes first) and
        # each descriptor's generation, which its release mark carries.
        self._free = list(range(g.capacity - 1, -1, -1))
        self._gens = [0] * g.capacity
        # Live arena allocations, sorted by offset; ``_cursor`` ends the latest one.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._cursor = 0
        self._in_use = 0
        self.wakeups = 0
        self.live: list[int] = []
        self.live_mask = 0
        self._waiting_words: list[int] = []
        self._patterns: dict[int, tuple[int, int, int, int]] = {}
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
        self._waiting_words = [Geometry.consumer_word(s) + W.C_WAITING for s in self.live]

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
        self._waiting_words = [Geometry.consumer_word(s) + W.C_WAITING for s in self.live]
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

    def allocate(self, nbytes: int, loan: bool) -> Rec | None:
        """Take a descriptor and arena room for ``nbytes``, or ``None`` if there is none.

        Released messages are reclaimed in order first when a few are in flight or the
        message is large; if there is still no room, every released message is reclaimed,
        out of order, and the allocation tried again.
        """
        inflight = self._inflight
        if inflight and (len(inflight) >= _RECLAIM_BATCH or nbytes >= _EAGER_BYTES):
            self.reclaim()
        rec = self._take(nbytes)
        if rec is None:
            if not inflight:
                return None
            self.reclaim(everything=True)
            rec = self._take(nbytes)
            if rec is None:
                return None
        if loan:
            self.reserved += 1
        return rec

    def _take(self, nbytes: int) -> Rec | None:
        free = self._free
        if not free:
            return None
        need = (nbytes + _ALIGN_MASK) & ~_ALIGN_MASK
        offset = self._place(need) if need else 0
        if offset < 0:
            return None
        desc = free.pop()
        gen = self._gens[desc] = (self._gens[desc] + 1) & 0x7F
        return Rec(desc, gen | 0x80, offset, nbytes, need)

    def _place(self, need: int) -> int:
        """Arena offset for ``need`` bytes (recorded as live), or -1 if no gap holds them."""
        starts = self._starts
        ends = self._ends
        if not starts or starts[0] >= need:
            at = 0  # the start: hot lines, compact footprint
            i = 0
        else:
            at = self._cursor  # right after the latest allocation, as a ring would
            i = bisect.bisect_left(starts, at)
            limit = starts[i] if i < len(starts) else self.arena_size
            if limit - at < need:
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
        end = at + need
        starts.insert(i, at)
        ends.insert(i, end)
        self._cursor = end
        self._in_use += need
        return at

    def _give_back(self, rec: Rec) -> None:
        need = rec.footprint
        if need:
            starts = self._starts
            i = bisect.bisect_left(starts, rec.offset)
            del starts[i]
            del self._ends[i]
            self._in_use -= need
        self._free.append(rec.desc)

    def free_unpublished(self, rec: Rec) -> None:
        """Give back a loan that is discarded."""
        self.reserved -= 1
        self._give_back(rec)

    # -- publication ---------------------------------------------------------------------------

    def submit(
        self, rec: Rec, length: int, flags: int, progress: int, ready: bool, loan: bool
    ) -> None:
        """Give ``rec`` its sequence number; publish what can be and wake who waits."""
        if loan:
            self.reserved -= 1
        rec.seq = self.next_seq
        self.next_seq += 1
        rec.length = length
        rec.flags = flags
        rec.progress = progress
        rec.ready = ready
        pending = self._pending
        if not ready or pending:
            pending.append(rec)
            self._advance()
            return
        self._publish(rec)
        if _BARRIERS:
            _sys.release_fence()
        w = self._w
        w[W.HEAD] = self.head
        if _FENCE_ACQUIRE is not None and _FENCE_RELEASE is not None:
            _FENCE_ACQUIRE()  # the x86-64 full fence, without a Python-level call
            _FENCE_RELEASE()
        else:
            _sys.full_fence()
        for word in self._waiting_words:
            if w[word]:
                self.wake_all()
                return

    def mark_ready(self, rec: Rec) -> None:
        """An offloaded copy landed; publish it (and whatever waited behind it)."""
        rec.ready = True
        self._advance()

    def _advance(self) -> None:
        pending = self._pending
        moved = False
        while pending and pending[0].ready:
            self._publish(pending.popleft())
            moved = True
        if moved:
            _sys.release_fence()
            self._w[W.HEAD] = self.head
            self.notify()

    def _publish(self, rec: Rec) -> None:
        seq = rec.seq
        mask = self.live_mask
        pat = self._patterns.get(mask)
        if pat is None:
            lo, hi = release_pattern(mask)
            pat = self._patterns[mask] = (lo * 0xFF, hi * 0xFF, lo, hi)
        mark = rec.mark
        rec.mask = mask
        rec.mlo = pat[0]
        rec.mhi = pat[1]
        rec.plo = pat[2] * mark
        rec.phi = pat[3] * mark
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

    def write_progress(self, rec: Rec) -> None:
        """Store ``rec.progress`` (and its flags) if it is published, and wake who waits."""
        if rec.seq < 0 or rec.seq >= self.head:
            return
        d = (self._desc_off >> 3) + rec.desc * 8
        if rec.flags & FLAG_ABORTED:
            self._w[d + W.D_MASK] = rec.mask | rec.flags | rec.mark << MARK_SHIFT
        _sys.release_fence()
        self._w[d + W.D_PROGRESS] = rec.progress
        self.notify()

    def notify(self) -> None:
        """Wake sleeping subscribers, if any."""
        _sys.full_fence()
        w = self._w
        for word in self._waiting_words:
            if w[word]:
                self.wake_all()
                return

    def wake_all(self) -> None:
        """Bump the data epoch and wake every sleeper (also used on close)."""
        w = self._w
        w[W.WAKE_STAMP] = time.monotonic_ns()
        w[W.DATA_EPOCH] = (w[W.DATA_EPOCH] + 1) & 0xFFFFFFFF
        _sys.futex_wake(self._data_epoch_address)
        self.wakeups += 1

    def unpublished(self) -> int:
        return len(self._pending)

    # -- reclamation ---------------------------------------------------------------------------

    def reclaim(self, *, everything: bool = False) -> Rec | None:
        """Retire released messages; return the oldest one still held, if any.

        By default only from the oldest message on, up to the first one still held (the
        cheap common case); with ``everything``, released messages behind a held one too.
        """
        inflight = self._inflight
        w = self._w
        mark_word = self._mark_word
        freed = False
        while inflight:
            rec = inflight[0]
            mw = mark_word + rec.desc * 8
            if (w[mw] & rec.mlo) != rec.plo or (w[mw + 1] & rec.mhi) != rec.phi:
                break
            inflight.popleft()
            self._retire(rec)
            freed = True
        if everything and len(inflight) > 1:
            held: list[Rec] = []
            for rec in inflight:
                mw = mark_word + rec.desc * 8
                if (w[mw] & rec.mlo) != rec.plo or (w[mw + 1] & rec.mhi) != rec.phi:
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

    def _retire(self, rec: Rec) -> None:
        trim = self._trim_above
        if trim is not None and rec.nbytes >= trim:
            self._seg.trim(rec.offset, rec.nbytes)
        self._give_back(rec)
