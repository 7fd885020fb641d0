"""Anonymous segments (the in-process backend), their header, trimming and closing."""

from __future__ import annotations

import numpy as np
import pytest

from sealserve.errors import IPCError
from sealserve.ipc import Segment, SegmentState
from sealserve.ipc._layout import read_geometry


def test_an_anonymous_segment_has_a_valid_header_and_no_descriptor() -> None:
    with Segment.create(capacity=4, arena_bytes=8192, max_subscribers=1, memory="anonymous") as seg:
        g = read_geometry(seg.bytes, mapped_size=seg.geometry.segment_size)
        assert g.arena_size == 8192
        assert seg.kind == "anonymous"
        with pytest.raises(IPCError, match="cannot be shared"):
            seg.fileno()
    assert seg.state is SegmentState.CLOSED
    seg.close()  # idempotent


def test_trim_gives_whole_pages_back_as_zeros() -> None:
    with Segment.create(
        capacity=4, arena_bytes=4 * 4096, max_subscribers=1, memory="anonymous"
    ) as seg:
        seg.arena[:] = b"\xff" * len(seg.arena)
        seg.trim(100, 3 * 4096)  # pages 1 and 2 are wholly inside
        assert bytes(seg.arena[:4096]) == b"\xff" * 4096
        assert bytes(seg.arena[4096 : 3 * 4096]) == bytes(2 * 4096)
        assert bytes(seg.arena[3 * 4096 :]) == b"\xff" * 4096


def test_closing_under_a_live_view_defers_the_unmap() -> None:
    seg = Segment.create(capacity=4, arena_bytes=4096, max_subscribers=1, memory="anonymous")
    arr = np.frombuffer(seg.arena, np.uint8)  # an export of the mapping
    seg.close()
    assert seg.state is SegmentState.CLOSED
    assert arr[0] == 0  # still mapped: the view keeps it alive
    del arr


def test_unknown_memory_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="memory must be one of"):
        Segment.create(capacity=4, arena_bytes=4096, max_subscribers=1, memory="ram")  # type: ignore[arg-type]
