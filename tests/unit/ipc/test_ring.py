"""The producer's bookkeeping: arena placement, release marks, reclamation in any order."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from sealserve.ipc import Segment, _core
from sealserve.ipc._layout import CONSUMER_LEFT, Geometry, W
from sealserve.ipc._ring import ProducerRing, Rec

pytestmark = pytest.mark.usefixtures("ipc_core")


@pytest.fixture
def segment() -> Iterator[Segment]:
    seg = Segment.create(capacity=8, arena_bytes=64 << 10, max_subscribers=2, memory="anonymous")
    yield seg
    seg.close()


def _release(seg: Segment, rec: Rec, slot: int) -> None:
    """What a subscriber's ``Sample.release`` writes."""
    seg.bytes[seg.geometry.desc_offset + rec.desc * 64 + W.D_MARKS_BYTE + slot] = rec.mark


def _publish(ring: ProducerRing, n: int) -> Rec:
    rec = ring.allocate(n)
    assert rec is not None
    ring.submit(rec, n, 0, n, True)
    return rec


def test_a_ring_that_keeps_up_walks_its_window_then_wraps(segment: Segment) -> None:
    # Not the same few lines over and over: the consumer still holds what it just read, and
    # writing it again would pull it back from the other core.  A window (by default four
    # times the consumer's cache) later, the lines have left that cache.
    ring = _core.ring_class()(segment, trim_above=None, window_bytes=16 << 10)
    assert ring.window_bytes == 16 << 10
    slot = ring.attach()
    assert slot == 0
    offsets = []
    for _ in range(50):
        rec = _publish(ring, 3000)
        offsets.append(rec.offset)
        _release(segment, rec, 0)
        ring.reclaim()
    assert offsets[:6] == [0, 3008, 6016, 9024, 12032, 0]  # 15040 + 3008 > 16 KiB: wrap
    assert set(offsets) == {0, 3008, 6016, 9024, 12032}
    # Without a window the walk covers the whole arena before it wraps.
    whole = _core.ring_class()(segment, trim_above=None)
    assert whole.window_bytes == segment.geometry.arena_size


def test_a_window_larger_than_the_arena_is_the_arena_and_a_bad_one_is_named(
    segment: Segment,
) -> None:
    ring = _core.ring_class()(segment, trim_above=None, window_bytes=1 << 40)
    ring.attach()
    offsets = []
    for _ in range(30):
        rec = _publish(ring, 3000)
        offsets.append(rec.offset)
        _release(segment, rec, 0)
        ring.reclaim()
    assert max(offsets) + 3008 <= segment.geometry.arena_size
    assert offsets[21] == 0  # 21 messages fill 64 KiB; the 22nd wraps
    with pytest.raises(ValueError, match="window_bytes must be >= 1"):
        _core.ring_class()(segment, trim_above=None, window_bytes=0)


def test_a_stream_walks_forward_and_wraps_like_a_ring(segment: Segment) -> None:
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    live: list[Rec] = []
    offsets = []
    for _ in range(40):
        rec = ring.allocate(20_000)
        if rec is None:
            _release(segment, live.pop(0), 0)
            rec = ring.allocate(20_000)
        assert rec is not None
        ring.submit(rec, 20_000, 0, 20_000, True)
        offsets.append(rec.offset)
        live.append(rec)
    assert set(offsets) == {0, 20_032, 40_064}  # three fit; each goes where the oldest was


def test_allocations_never_overlap_while_live(segment: Segment) -> None:
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    live: list[Rec] = []
    for i in range(400):
        size = 1000 + (i * 7919) % 20_000
        rec = ring.allocate(size)
        if rec is None:
            victim = live.pop((i * 31) % len(live))  # released in no particular order
            _release(segment, victim, 0)
            continue
        ring.submit(rec, size, 0, size, True)
        for other in live:
            assert rec.offset + size <= other.offset or other.offset + other.nbytes <= rec.offset
        assert rec.offset + size <= segment.geometry.arena_size
        live.append(rec)
        assert len(live) <= ring.in_flight <= ring.capacity  # released, maybe not yet reclaimed
        spans = ring.allocations()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
        assert ring.arena_in_use == sum(end - start for start, end in spans)


def test_released_messages_behind_a_held_one_are_reclaimed_when_room_is_needed(
    segment: Segment,
) -> None:
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    recs = [_publish(ring, 64) for _ in range(8)]  # every descriptor taken
    for rec in recs[1:]:
        _release(segment, rec, 0)
    oldest = recs[0].seq
    assert ring.reclaim() is recs[0]  # the cheap pass stops at the held message
    assert ring.in_flight == 8
    late = ring.allocate(64)  # no descriptor free: the full pass finds seven
    assert late is not None
    assert ring.in_flight == 1
    assert ring.descriptors_in_use == 2
    assert ring.tail == oldest
    assert recs[0].seq == oldest  # still held: its descriptor was not taken again
    _release(segment, recs[0], 0)
    assert ring.reclaim() is None
    assert ring.tail == ring.head


def test_reclamation_waits_for_every_slot(segment: Segment) -> None:
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    ring.attach()
    a, b = _publish(ring, 100), _publish(ring, 100)
    _release(segment, b, 0)
    _release(segment, b, 1)
    _release(segment, a, 0)
    assert ring.reclaim(everything=True) is a  # slot 1 still holds a; b goes
    assert ring.in_flight == 1
    assert ring.tail == 0
    _release(segment, a, 1)
    assert ring.reclaim() is None
    assert ring.tail == 2
    assert ring.arena_in_use == 0


def test_marks_of_an_earlier_use_of_a_descriptor_do_not_count(segment: Segment) -> None:
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    first = _publish(ring, 64)
    desc, mark = first.desc, first.mark
    _release(segment, first, 0)
    ring.reclaim()
    again = _publish(ring, 64)  # the freed descriptor is taken again, with a new mark
    assert again.desc == desc
    assert again.mark != mark
    assert ring.reclaim() is again
    for _ in range(300):  # the 7-bit generation wraps without ever matching a stale mark
        _release(segment, again, 0)
        ring.reclaim()
        again = _publish(ring, 64)
        assert ring.reclaim() is again


def test_a_departed_subscriber_is_named_and_its_marks_written(segment: Segment) -> None:
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    ring.attach()
    rec = _publish(ring, 64)
    _release(segment, rec, 0)
    segment.words[Geometry.consumer_word(1) + W.C_STATE] = CONSUMER_LEFT
    assert ring.reclaim() is rec
    assert ring.departed_slots() == [(1, "left")]
    assert ring.drop(1) == 1
    assert ring.reclaim() is None
    assert ring.live == [0]


def test_descriptors_run_out_before_the_arena(segment: Segment) -> None:
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    recs = [ring.allocate(0) for _ in range(8)]
    assert all(r is not None for r in recs)
    assert ring.allocate(0) is None  # eight loans hold all eight descriptors
    ring.free_unpublished(recs[0])  # type: ignore[arg-type]
    assert ring.allocate(0) is not None
    assert ring.attach() == 1
    assert ring.attach() is None  # two slots only


def test_a_slot_taken_over_keeps_the_marks_its_old_occupant_owed(segment: Segment) -> None:
    # Found by the property tests: attaching into a freshly dropped slot used to clear the
    # marks that drop() had written for messages still in flight, which then never left.
    ring = _core.ring_class()(segment, trim_above=None)
    ring.attach()
    ring.attach()
    held = _publish(ring, 64)
    _release(segment, held, 0)
    ring.drop(1)  # slot 1 left while holding ``held``
    assert ring.attach() == 1
    assert ring.reclaim() is None
    assert ring.in_flight == 0
