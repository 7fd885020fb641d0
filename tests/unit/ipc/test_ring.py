"""The producer's bookkeeping: arena placement, lap marks, in-order reclamation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sealserve.ipc import Segment
from sealserve.ipc._layout import CONSUMER_LEFT, Geometry, W
from sealserve.ipc._ring import ProducerRing, Rec


@pytest.fixture
def segment() -> Iterator[Segment]:
    seg = Segment.create(capacity=8, arena_bytes=64 << 10, max_subscribers=2, memory="anonymous")
    yield seg
    seg.close()


def _release(seg: Segment, rec: Rec, slot: int) -> None:
    g = seg.geometry
    lap = ((rec.seq >> (g.capacity.bit_length() - 1)) & 0x7F) | 0x80
    seg.bytes[g.desc_offset + (rec.seq & (g.capacity - 1)) * 64 + W.D_MARKS_BYTE + slot] = lap


def _publish(ring: ProducerRing, n: int) -> Rec:
    rec = ring.allocate(n, False)
    assert rec is not None
    ring.submit(rec, n, 0, n, True, False)
    return rec


def test_a_ring_that_keeps_up_reuses_the_start_of_the_arena(segment: Segment) -> None:
    ring = ProducerRing(segment, trim_above=None)
    slot = ring.attach()
    assert slot == 0
    offsets = []
    for _ in range(50):
        rec = _publish(ring, 3000)
        offsets.append(rec.offset)
        _release(segment, rec, 0)
        ring.reclaim()
    assert set(offsets) <= {0, 3008, 6016, 9024, 12032}  # a handful of hot lines, not a walk


def test_allocations_never_overlap_while_live(segment: Segment) -> None:
    ring = ProducerRing(segment, trim_above=None)
    ring.attach()
    live: list[Rec] = []
    for i in range(200):
        size = 1000 + (i * 7919) % 20_000
        rec = ring.allocate(size, False)
        if rec is None:
            _release(segment, live.pop(0), 0)
            ring.reclaim()
            continue
        ring.submit(rec, size, 0, size, True, False)
        for other in live:
            assert rec.offset + size <= other.offset or other.offset + other.nbytes <= rec.offset
        assert rec.offset + size <= segment.geometry.arena_size
        live.append(rec)
        assert ring.in_flight == len(live) <= ring.capacity


def test_reclamation_is_in_order_and_waits_for_every_slot(segment: Segment) -> None:
    ring = ProducerRing(segment, trim_above=None)
    ring.attach()
    ring.attach()
    a, b = _publish(ring, 100), _publish(ring, 100)
    _release(segment, b, 0)
    _release(segment, b, 1)
    _release(segment, a, 0)
    assert ring.reclaim() is a  # b is released, but a (slot 1) holds the line
    assert ring.tail == 0
    _release(segment, a, 1)
    assert ring.reclaim() is None
    assert ring.tail == 2
    assert ring.arena_in_use == 0


def test_marks_of_an_earlier_lap_do_not_count(segment: Segment) -> None:
    ring = ProducerRing(segment, trim_above=None)
    ring.attach()
    first = _publish(ring, 64)
    _release(segment, first, 0)
    ring.reclaim()
    for _ in range(7):
        r = _publish(ring, 64)
        _release(segment, r, 0)
        ring.reclaim()
    again = _publish(ring, 64)  # seq 8 reuses descriptor 0, whose mark says lap 0
    assert again.seq & 7 == first.seq & 7
    assert ring.reclaim() is again


def test_a_departed_subscriber_is_named_and_its_marks_written(segment: Segment) -> None:
    ring = ProducerRing(segment, trim_above=None)
    ring.attach()
    ring.attach()
    rec = _publish(ring, 64)
    _release(segment, rec, 0)
    segment.words[Geometry.consumer_word(1) + W.C_STATE] = CONSUMER_LEFT
    assert ring.reclaim() is rec
    assert ring.departed(rec) == [(1, "left")]
    assert ring.drop(1) == 1
    assert ring.reclaim() is None
    assert ring.live == [0]


def test_descriptors_run_out_before_the_arena(segment: Segment) -> None:
    ring = ProducerRing(segment, trim_above=None)
    ring.attach()
    recs = [ring.allocate(0, True) for _ in range(8)]
    assert all(r is not None for r in recs)
    assert ring.allocate(0, True) is None  # eight loans hold all eight descriptors
    ring.free_unpublished(recs[0])  # type: ignore[arg-type]
    assert ring.allocate(0, False) is not None
    assert ring.attach() == 1
    assert ring.attach() is None  # two slots only


def test_a_slot_taken_over_keeps_the_marks_its_old_occupant_owed(segment: Segment) -> None:
    # Found by the property tests: attaching into a freshly dropped slot used to clear the
    # marks that drop() had written for messages still in flight, which then never left.
    ring = ProducerRing(segment, trim_above=None)
    ring.attach()
    ring.attach()
    held = _publish(ring, 64)
    _release(segment, held, 0)
    ring.drop(1)  # slot 1 left while holding ``held``
    assert ring.attach() == 1
    assert ring.reclaim() is None
    assert ring.in_flight == 0
