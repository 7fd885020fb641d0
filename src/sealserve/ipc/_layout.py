"""Where everything lives in a channel segment, and the header that says so.

One segment carries one channel.  It is laid out as follows (all integers little-endian;
"word" means an aligned 64-bit word; every group of words with one writer has its own
64-byte cache line)::

    offset   size        what                                      written by
    0        80          header: magic, version, geometry, CRC-32  creator, once
    128      64          producer line: head, tail, state, pid,    producer
                         space-wait target, wake stamp, data epoch
    192      64          space line: space epoch, wake stamp        consumers
    256      64 * S      one line per subscriber slot: state, pid,  consumer (state: also
                         start cursor, waiting flag                the attaching side)
    4096     64 * C      descriptor table (C a power of two)        producer, except the
                                                                   release marks
    Q        8 * C       delivery queue: for sequence number s,     producer
                         word s mod C names s's descriptor
    A        arena_size  payload arena, 4 KiB aligned               producer (loans, copies)

A descriptor is eight words: ``tag`` (sequence number + 1, so an unwritten descriptor never
matches), ``offset`` and ``length`` within the arena, ``progress`` (bytes ready; equal to
``length`` once complete, smaller while a pipelined copy is still moving), ``mask``
(which subscriber slots must release it; flags in bits 32..47; the descriptor's release mark
in bits 48..55), then sixteen release marks, one byte per subscriber slot, each written only
by its subscriber.  Descriptors are taken and given back in any order: one held message
never holds up the others, and the queue keeps delivery in sequence order.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

from sealserve.errors import SegmentError

__all__ = [
    "ARENA_ALIGN",
    "CONSUMER_DEAD",
    "CONSUMER_FREE",
    "CONSUMER_LEFT",
    "CONSUMER_LIVE",
    "DESC_BYTES",
    "FLAG_PIPELINED",
    "MAGIC",
    "MARK_SHIFT",
    "MAX_SUBSCRIBERS",
    "PRODUCER_CLOSED",
    "PRODUCER_NONE",
    "PRODUCER_OPEN",
    "VERSION",
    "Geometry",
    "W",
    "read_geometry",
    "release_pattern",
    "write_header",
]

MAGIC = b"SEALIPC\x00"
VERSION = 2
MAX_SUBSCRIBERS = 16
DESC_BYTES = 64
ARENA_ALIGN = 64
_PAGE = 4096
_DESC_OFFSET = 4096
_HEADER = struct.Struct("<8sIIQIIQQQQQ")  # 72 bytes, followed by the CRC-32
_CRC = struct.Struct("<I")
_CRC_AT = _HEADER.size

# Producer states (word W.PSTATE) and subscriber slot states (word W.C_STATE).
PRODUCER_NONE = 0
PRODUCER_OPEN = 1
PRODUCER_CLOSED = 2
CONSUMER_FREE = 0
CONSUMER_LIVE = 1
CONSUMER_LEFT = 2  # closed in an orderly way; the producer reclaims its marks
CONSUMER_DEAD = 3  # its process died; the producer reclaims its marks

# Descriptor flags (bits 32..47 of the mask word); the release mark sits above them.
FLAG_PIPELINED = 1 << 32
MARK_SHIFT = 48


class W:
    """Word indices (byte offset // 8) of the control words and descriptor fields."""

    # producer line (bytes 128..191)
    HEAD = 16  # published descriptors; its low 32 bits are not a futex (see DATA_EPOCH)
    TAIL = 17  # reclaimed descriptors
    PSTATE = 18
    PPID = 19
    SPACE_WANT = 20  # 0, or (sequence number + 1) whose release should wake the producer
    WAKE_STAMP = 21  # monotonic ns of the producer's last wake-up call
    DATA_EPOCH = 22  # futex word: bumped when a waiting subscriber must look again
    PCPU = 23  # CPU + 1 the producer last waited or sent a wake-up on (0: unknown)
    # space line (bytes 192..255), written by any subscriber
    SPACE_EPOCH = 24  # futex word: bumped when the waiting producer must look again
    SPACE_STAMP = 25
    # subscriber slot i occupies words CONSUMERS + 8 * i ..
    CONSUMERS = 32
    C_STATE = 0
    C_PID = 1
    C_START = 2  # first sequence number this subscriber receives
    C_WAITING = 3  # 1 while the subscriber sleeps or is about to
    C_CPU = 4  # CPU + 1 the subscriber last waited or sent a wake-up on (0: unknown)
    # descriptor fields (word offsets within a descriptor)
    D_TAG = 0
    D_OFFSET = 1
    D_LENGTH = 2
    D_PROGRESS = 3
    D_MASK = 4
    D_MARKS = 5  # marks occupy words 5 and 6 (bytes 40..55)
    D_MARKS_BYTE = 40


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The fixed shape of a segment, recorded in its header."""

    segment_size: int
    capacity: int
    max_subscribers: int
    desc_offset: int
    arena_offset: int
    arena_size: int
    created_ns: int = 0

    @classmethod
    def plan(cls, *, capacity: int, arena_bytes: int, max_subscribers: int) -> Geometry:
        """Lay out a segment for ``capacity`` descriptors and an arena of ``arena_bytes``."""
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if capacity < 2 or capacity > 1 << 20 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two in [2, 2**20], got {capacity!r}")
        if isinstance(arena_bytes, bool) or not isinstance(arena_bytes, int):
            raise TypeError(f"arena_bytes must be an int, got {type(arena_bytes).__name__}")
        if arena_bytes < _PAGE or arena_bytes > 1 << 44:
            raise ValueError(f"arena_bytes must be within [4096, 2**44], got {arena_bytes!r}")
        if not 1 <= max_subscribers <= MAX_SUBSCRIBERS:
            raise ValueError(
                f"max_subscribers must be within [1, {MAX_SUBSCRIBERS}], got {max_subscribers!r}"
            )
        arena_size = _align(arena_bytes, _PAGE)
        arena_offset = _align(_DESC_OFFSET + capacity * (DESC_BYTES + 8), _PAGE)
        return cls(
            segment_size=arena_offset + arena_size,
            capacity=capacity,
            max_subscribers=max_subscribers,
            desc_offset=_DESC_OFFSET,
            arena_offset=arena_offset,
            arena_size=arena_size,
        )

    @property
    def queue_offset(self) -> int:
        """Byte offset of the delivery queue (right after the descriptor table)."""
        return self.desc_offset + self.capacity * DESC_BYTES

    def desc_word(self, index: int) -> int:
        """Word index of descriptor ``index`` of the table."""
        return (self.desc_offset + index * DESC_BYTES) >> 3

    def queue_word(self, seq: int) -> int:
        """Word index of the queue entry that names the descriptor of sequence number ``seq``."""
        return (self.queue_offset >> 3) + (seq & (self.capacity - 1))

    @staticmethod
    def consumer_word(slot: int) -> int:
        return W.CONSUMERS + 8 * slot


def write_header(buf: memoryview, geometry: Geometry, *, created_ns: int) -> None:
    """Write the header (magic, version, geometry, CRC) into a fresh, zeroed segment."""
    _HEADER.pack_into(
        buf,
        0,
        MAGIC,
        VERSION,
        _PAGE,
        geometry.segment_size,
        geometry.capacity,
        geometry.max_subscribers,
        geometry.desc_offset,
        geometry.arena_offset,
        geometry.arena_size,
        created_ns,
        0,
    )
    _CRC.pack_into(buf, _CRC_AT, zlib.crc32(buf[:_CRC_AT]))


def read_geometry(buf: memoryview, *, mapped_size: int) -> Geometry:
    """Validate the header of a segment someone else made; :class:`SegmentError` if wrong."""
    if mapped_size < _DESC_OFFSET:
        raise SegmentError(
            f"segment is {mapped_size} bytes, smaller than a header; it is not a sealserve "
            "channel segment"
        )
    fields = _HEADER.unpack_from(buf, 0)
    magic, version = fields[0], fields[1]
    if magic != MAGIC:
        raise SegmentError(
            f"segment has magic {magic!r}, expected {MAGIC!r}; it is not a sealserve channel "
            "segment"
        )
    if version != VERSION:
        raise SegmentError(
            f"segment has layout version {version}, this sealserve speaks version {VERSION}; "
            "run the same sealserve release on both sides"
        )
    (crc,) = _CRC.unpack_from(buf, _CRC_AT)
    if crc != zlib.crc32(buf[:_CRC_AT]):
        raise SegmentError("segment header is corrupt (CRC-32 mismatch)")
    _, _, header_size, size, capacity, max_subs, desc_off, arena_off, arena_size, created, _ = (
        fields
    )
    geometry = Geometry(
        segment_size=size,
        capacity=capacity,
        max_subscribers=max_subs,
        desc_offset=desc_off,
        arena_offset=arena_off,
        arena_size=arena_size,
        created_ns=created,
    )
    if (
        header_size != _PAGE
        or size != mapped_size
        or not _plausible(capacity, arena_size, max_subs)
        or Geometry.plan(capacity=capacity, arena_bytes=arena_size, max_subscribers=max_subs)
        != dataclasses.replace(geometry, created_ns=0)
    ):
        raise SegmentError(
            f"segment header describes a {size}-byte segment with {capacity} descriptors and a "
            f"{arena_size}-byte arena, which does not match its {mapped_size} mapped bytes"
        )
    return geometry


def release_pattern(mask: int) -> tuple[int, int]:
    """The two mark words a descriptor holds once every slot in ``mask`` has released it."""
    lo = hi = 0
    for slot in range(MAX_SUBSCRIBERS):
        if mask >> slot & 1:
            if slot < 8:
                lo |= 1 << (8 * slot)
            else:
                hi |= 1 << (8 * (slot - 8))
    return lo, hi


def _plausible(capacity: int, arena_size: int, max_subs: int) -> bool:
    return (
        2 <= capacity <= 1 << 20
        and not capacity & (capacity - 1)
        and _PAGE <= arena_size <= 1 << 44
        and arena_size % _PAGE == 0
        and 1 <= max_subs <= MAX_SUBSCRIBERS
    )


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to
