"""The compiled core of the hot path: built, in step with the layout, and safe once closed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sealserve.ipc import Segment, _core
from sealserve.ipc._layout import (
    ARENA_ALIGN,
    CONSUMER_DEAD,
    CONSUMER_LEFT,
    CONSUMER_LIVE,
    MARK_SHIFT,
    MAX_SUBSCRIBERS,
    W,
)
from sealserve.ipc._ring import FLAG_ABORTED


@pytest.fixture
def segment() -> Iterator[Segment]:
    seg = Segment.create(capacity=8, arena_bytes=64 << 10, max_subscribers=2, memory="anonymous")
    yield seg
    seg.close()


def test_the_compiled_core_is_built() -> None:
    # The install compiles it (hatch_build.py); only a build told not to may lack it.
    if os.environ.get("SEALSERVE_NO_EXTENSION") == "1":
        assert _core.available() in (("python",), ("c", "python"))
    else:
        assert _core.available() == ("c", "python"), "run make install (needs gcc)"
        assert _core.compiled() is not None


def test_its_layout_is_the_layout() -> None:
    compiled = _core.compiled()
    if compiled is None:
        pytest.skip("the compiled ipc core is not built here")
    expected = {
        name: getattr(W, name)
        for name in (
            "HEAD",
            "TAIL",
            "SPACE_WANT",
            "WAKE_STAMP",
            "DATA_EPOCH",
            "PCPU",
            "SPACE_EPOCH",
            "SPACE_STAMP",
            "CONSUMERS",
            "C_STATE",
            "C_PID",
            "C_START",
            "C_WAITING",
            "C_CPU",
            "D_MARKS",
            "D_MARKS_BYTE",
        )
    }
    expected |= {
        "MARK_SHIFT": MARK_SHIFT,
        "FLAG_ABORTED": FLAG_ABORTED,
        "ARENA_ALIGN": ARENA_ALIGN,
        "MAX_SUBSCRIBERS": MAX_SUBSCRIBERS,
        "CONSUMER_LIVE": CONSUMER_LIVE,
        "CONSUMER_LEFT": CONSUMER_LEFT,
        "CONSUMER_DEAD": CONSUMER_DEAD,
    }
    assert expected == compiled.LAYOUT


def test_use_names_the_cores_and_restores() -> None:
    before = _core.active()
    try:
        with pytest.raises(ValueError, match="core must be one of c, python, got 'asm'"):
            _core.use("asm")
        _core.use("python")
        assert _core.active() == "python"
        assert _core.ring_class().__module__ == "sealserve.ipc._ring"
        seg = Segment.create(capacity=2, arena_bytes=4096, max_subscribers=1, memory="anonymous")
        try:
            assert _core.reader(seg, 0, 0) is None  # the pure-Python subscriber reads itself
        finally:
            seg.close()
    finally:
        _core.use(before)


def test_a_closed_compiled_ring_and_reader_refuse_instead_of_touching_memory(
    segment: Segment,
) -> None:
    compiled = _core.compiled()
    if compiled is None:
        pytest.skip("the compiled ipc core is not built here")
    ring = compiled.ProducerRing(segment, trim_above=None)
    assert ring.attach() == 0
    reader = compiled.Reader(segment, slot=0, cursor=0)
    ring.close()
    reader.close()
    with pytest.raises(ValueError, match="ring is closed"):
        ring.allocate(64)
    with pytest.raises(ValueError, match="reader is closed"):
        reader.next()
    with pytest.raises(ValueError, match="reader is closed"):
        reader.spin(0, 1000, False)
    ring.close()  # idempotent
    reader.close()


def test_a_compiled_rec_belongs_to_its_ring(segment: Segment) -> None:
    compiled = _core.compiled()
    if compiled is None:
        pytest.skip("the compiled ipc core is not built here")
    other = Segment.create(capacity=8, arena_bytes=64 << 10, max_subscribers=1, memory="anonymous")
    try:
        a = compiled.ProducerRing(segment, trim_above=None)
        b = compiled.ProducerRing(other, trim_above=None)
        rec = a.allocate(64)
        with pytest.raises(ValueError, match="belongs to another ring"):
            b.submit(rec, 64, 0, 64, True)
        with pytest.raises(TypeError, match="expected a Rec"):
            a.submit(object(), 64, 0, 64, True)
        with pytest.raises(ValueError, match="nbytes must be >= 0"):
            a.allocate(-1)
        a.close()
        b.close()
    finally:
        other.close()
