"""The producer's bookkeeping of a channel: allocate, publish in order, reclaim in order.

:class:`ProducerRing` owns the producer half of the segment and nothing else: no waiting, no
engines, no locks (the publisher holds its lock around every call).  Keeping it apart makes
the invariants easy to state and to test under random interleavings:

* sequence numbers are dense; descriptors are published in sequence order and ``head`` only
  grows; ``tail <= head <= next_seq`` and ``next_seq - tail + reserved <= capacity``;
* a message is reclaimed only once every subscriber in its mask has written its release mark
  for this lap of the ring (marks carry the lap number, so they never need resetting);
* arena allocations are a byte ring over a virtual offset that only grows; an allocation
  goes back to the start of the arena whenever the live bytes leave room there, so a
  channel that keeps up reuses the same few (hot) cache lines; live allocations never
  overlap.
"""

from __future__ import annotations

import collections
import struct
import time

from sealserve.ipc import _sys
from sealserve.ipc._layout import (
    CONSUMER_DEAD,
    CONSUMER_FREE,
    CONSUMER_LEFT,
    CONSUMER_LIVE,
    Geometry,
    W,
    release_pattern,
)
from sealserve.ipc._segment import Segment

__all__ = ["FLAG_ABORTED", "ProducerRing", "Rec"]

_DESC = struct.Struct("<5Q")
_BARRIERS = _sys.NEEDS_BARRIERS
_FENCE_ACQUIRE, _FENCE_RELEASE = _sys.FENCE_PAIR
#: Reclaim at every allocation once this many messages are in flight (or for large ones).
_RECLAIM_BATCH = 4
_EAGER_BYTES = 64 << 10
#: Descriptor flag: the message's copy failed; subscribers skip it.
FLAG_ABORTED = 1 << 33


class Rec:
    """One message: its arena allocation, then its publication state."""

    __slots__ = (
        "flags",
        "freed",
        "length",
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
        "vend",
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

    def __init__(self, offset: int, nbytes: int, vend: int) -> None:
        self.offset = offset
        self.nbytes = nbytes
        self.vend = vend
        self.freed = False
        self.seq = -1
        self.mask = 0

    def __repr__(self) -> str:
        return f"Rec(seq={self.seq}, offset={self.offset}, nbytes={self.nbytes})"


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
        self._lap_shift = g.capacity.bit_length() - 1
        self._desc_off = g.desc_offset
        self._mark_word = (g.desc_offset >> 3) + W.D_MARKS
        self.arena_size = g.arena_size
        self._trim_above = trim_above
        self._data_epoch_address = segment.address + W.DATA_EPOCH * 8
        self.next_seq = self.head = self.tail = w[W.HEAD]
        self.reserved = 0
        self._pending: collections.deque[Rec] = collections.deque()
        self._inflight: collections.deque[Rec] = collections.deque()
        self._allocs: collections.deque[Rec] = collections.deque()
        self._alloc_head = self._alloc_tail = 0
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
        """Descriptors submitted and not yet reclaimed."""
        return self.next_seq - self.tail

    @property
    def arena_in_use(self) -> int:
        return self._alloc_head - self._alloc_tail

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
        keep = {rec.seq & self._cmask for rec in self._inflight if rec.mask >> slot & 1}
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
                at = self._desc_off + (rec.seq & self._cmask) * 64 + W.D_MARKS_BYTE + slot
                lap = ((rec.seq >> self._lap_shift) & 0x7F) | 0x80
                if b[at] != lap:
                    b[at] = lap
                    released += 1
        self.live.remove(slot)
        self.live_mask &= ~(1 << slot)
        self._waiting_words = [Geometry.consumer_word(s) + W.C_WAITING for s in self.live]
        self._w[Geometry.consumer_word(slot) + W.C_STATE] = CONSUMER_FREE
        return released

    def departed(self, rec: Rec) -> list[tuple[int, str]]:
        """Subscribers in ``rec``'s mask that left or were marked dead."""
        return [(slot, why) for slot, why in self.departed_slots() if rec.mask >> slot & 1]

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
        """Take arena room for ``nbytes`` and one descriptor, or ``None`` if there is none.

        Released messages are reclaimed first when a few are in flight or the message is
        large (so the allocation can go back to the start of the arena); otherwise
        reclamation waits for the next batch, which keeps small messages cheap.
        """
        inflight = self._inflight
        if inflight and (len(inflight) >= _RECLAIM_BATCH or nbytes >= _EAGER_BYTES):
            self.reclaim()
        if self.next_seq - self.tail + self.reserved >= self.capacity:
            return None
        need = (nbytes + 63) & ~63
        head = self._alloc_head
        if need == 0:
            rec = Rec(0, 0, head)
        else:
            tail = self._alloc_tail
            asize = self.arena_size
            if head == tail:
                head = tail = self._alloc_tail = 0
            next_lap = (head // asize + 1) * asize
            if next_lap + need - tail <= asize:
                start = next_lap  # back to the start: hot lines, compact footprint
            elif head % asize + need <= asize and head + need - tail <= asize:
                start = head
            else:
                return None
            rec = Rec(start % asize, nbytes, start + need)
        self._alloc_head = rec.vend
        self._allocs.append(rec)
        if loan:
            self.reserved += 1
        return rec

    def free_unpublished(self, rec: Rec) -> None:
        """Give back a loan that is discarded."""
        self.reserved -= 1
        rec.freed = True
        self._advance_allocs()

    def _advance_allocs(self) -> None:
        allocs = self._allocs
        while allocs and allocs[0].freed:
            self._alloc_tail = allocs.popleft().vend

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
        lap = ((seq >> self._lap_shift) & 0x7F) | 0x80
        rec.mask = mask
        rec.mlo = pat[0]
        rec.mhi = pat[1]
        rec.plo = pat[2] * lap
        rec.phi = pat[3] * lap
        _DESC.pack_into(
            self._b,
            self._desc_off + (seq & self._cmask) * 64,
            seq + 1,
            rec.offset,
            rec.length,
            rec.progress,
            mask | rec.flags,
        )
        self._inflight.append(rec)
        self.head = seq + 1

    def write_progress(self, rec: Rec) -> None:
        """Store ``rec.progress`` (and its flags) if it is published, and wake who waits."""
        if rec.seq < 0 or rec.seq >= self.head:
            return
        d = (self._desc_off >> 3) + (rec.seq & self._cmask) * 8
        if rec.flags & FLAG_ABORTED:
            self._w[d + W.D_MASK] = rec.mask | rec.flags
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

    def reclaim(self) -> Rec | None:
        """Retire released messages in order; return the first one still held, if any."""
        inflight = self._inflight
        w = self._w
        cmask = self._cmask
        mark_word = self._mark_word
        freed = False
        blocked: Rec | None = None
        while inflight:
            rec = inflight[0]
            mw = mark_word + (rec.seq & cmask) * 8
            if (w[mw] & rec.mlo) != rec.plo or (w[mw + 1] & rec.mhi) != rec.phi:
                blocked = rec
                break
            inflight.popleft()
            rec.freed = True
            freed = True
            self.tail = rec.seq + 1
            trim = self._trim_above
            if trim is not None and rec.nbytes >= trim:
                self._seg.trim(rec.offset, rec.nbytes)
        if freed:
            w[W.TAIL] = self.tail
            self._advance_allocs()
        return blocked
