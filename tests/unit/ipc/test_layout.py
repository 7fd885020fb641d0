"""Segment geometry and header: planned shapes, and every way a header can be wrong."""

from __future__ import annotations

import struct
import zlib

import pytest

from sealserve.errors import SegmentError
from sealserve.ipc._layout import (
    DESC_BYTES,
    MAGIC,
    VERSION,
    Geometry,
    read_geometry,
    release_pattern,
    write_header,
)


def _header(capacity: int = 8, arena: int = 1 << 16) -> tuple[bytearray, Geometry]:
    g = Geometry.plan(capacity=capacity, arena_bytes=arena, max_subscribers=2)
    buf = bytearray(g.segment_size)
    write_header(memoryview(buf), g, created_ns=123)
    return buf, g


def test_plan_lays_out_descriptors_a_queue_then_a_page_aligned_arena() -> None:
    g = Geometry.plan(capacity=64, arena_bytes=10_000, max_subscribers=3)
    assert g.desc_offset == 4096
    assert g.queue_offset == g.desc_offset + 64 * DESC_BYTES
    assert g.arena_offset >= g.queue_offset + 64 * 8
    assert g.arena_offset % 4096 == 0
    assert g.arena_size == 12_288  # rounded up to whole pages
    assert g.segment_size == g.arena_offset + g.arena_size
    assert g.desc_word(0) == 4096 // 8
    assert g.desc_word(3) == g.desc_word(0) + 3 * 8
    assert g.queue_word(0) == g.queue_offset // 8
    assert g.queue_word(64) == g.queue_word(0)  # the queue wraps
    assert g.queue_word(65) == g.queue_word(0) + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 3}, "power of two"),
        ({"capacity": 1}, "power of two"),
        ({"capacity": True}, "int"),
        ({"arena_bytes": 100}, "arena_bytes"),
        ({"arena_bytes": 2.5}, "int"),
        ({"max_subscribers": 0}, "max_subscribers"),
        ({"max_subscribers": 17}, "max_subscribers"),
    ],
)
def test_plan_names_the_bad_argument(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"capacity": 8, "arena_bytes": 1 << 16, "max_subscribers": 1}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        Geometry.plan(**args)  # type: ignore[arg-type]


def test_a_written_header_reads_back() -> None:
    buf, g = _header()
    got = read_geometry(memoryview(buf), mapped_size=len(buf))
    assert got.created_ns == 123
    assert got.capacity == g.capacity
    assert got.arena_offset == g.arena_offset


def test_wrong_magic_is_a_segment_error() -> None:
    buf, _ = _header()
    buf[0:8] = b"NOTSEAL\x00"
    with pytest.raises(SegmentError, match="not a sealserve channel segment"):
        read_geometry(memoryview(buf), mapped_size=len(buf))


def test_another_version_is_a_segment_error_that_says_what_to_do() -> None:
    buf, _ = _header()
    struct.pack_into("<I", buf, 8, VERSION + 1)
    struct.pack_into("<I", buf, 72, zlib.crc32(bytes(buf[:72])))  # a well-formed v2 header
    with pytest.raises(SegmentError, match=f"version {VERSION + 1}.*same sealserve release"):
        read_geometry(memoryview(buf), mapped_size=len(buf))


def test_a_flipped_bit_in_the_header_is_caught_by_the_crc() -> None:
    buf, _ = _header()
    buf[30] ^= 0x01
    with pytest.raises(SegmentError, match="corrupt"):
        read_geometry(memoryview(buf), mapped_size=len(buf))


def test_a_header_that_lies_about_its_size_is_refused() -> None:
    buf, _ = _header()
    with pytest.raises(SegmentError, match="does not match"):
        read_geometry(memoryview(buf), mapped_size=len(buf) + 4096)
    # a consistent CRC over an inconsistent geometry (capacity not a power of two)
    struct.pack_into("<I", buf, 24, 6)
    struct.pack_into("<I", buf, 72, zlib.crc32(bytes(buf[:72])))
    with pytest.raises(SegmentError, match="does not match"):
        read_geometry(memoryview(buf), mapped_size=len(buf))


def test_a_segment_smaller_than_a_header_is_refused() -> None:
    with pytest.raises(SegmentError, match="smaller than a header"):
        read_geometry(memoryview(bytearray(100)), mapped_size=100)


def test_release_pattern_sets_one_byte_per_slot() -> None:
    assert release_pattern(0) == (0, 0)
    assert release_pattern(0b1) == (0x01, 0)
    assert release_pattern(0b101) == (0x010001, 0)
    lo, hi = release_pattern(1 << 9 | 1 << 15)
    assert lo == 0
    assert hi == 0x01 << 8 | 0x01 << 56
    assert MAGIC.startswith(b"SEALIPC")
