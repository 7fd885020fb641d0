"""The useful work of ``sealserve bench ipc``: what every transport does to every message.

The producer writes every byte of a message and the consumer reads and checks every byte,
whatever carries it.  The work is the same for every transport and costs what a ``memcpy``
and a ``memcmp`` cost, with no fixed per-call overhead of its own (numpy's would be several
microseconds per message, more than the whole of a shared-memory hand-off at 64 bytes):

* a message is a 16-byte header (sequence number, send time) and a body;
* the body of message ``seq`` is the window ``[seq % 251, seq % 251 + len)`` of a
  precomputed pattern of period 251 (a prime), so consecutive messages differ in every
  byte: nothing can be cached, and a stale, torn or shifted body is caught;
* the producer writes the header, then copies the body window into the destination
  (``memoryview`` slice assignment: one ``memcpy``);
* the consumer compares the received body with the expected window
  (``bytes.startswith(view, start)``: one ``memcmp``, no copy) and checks the length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["HEADER_BYTES", "CheckFailed", "Work"]

HEADER_BYTES = 16
_HEADER = struct.Struct("<QQ")
_PERIOD = 251


class CheckFailed(AssertionError):
    """A message arrived torn, stale, short or corrupt."""


class Work:
    """Fill and check messages of one size (at least the 16-byte header)."""

    __slots__ = ("_pattern", "_pview", "body", "pos", "sent_ns", "seq", "size")

    def __init__(self, size: int) -> None:
        if size < HEADER_BYTES:
            raise ValueError(f"size must be >= {HEADER_BYTES}, got {size!r}")
        self.size = size
        self.body = size - HEADER_BYTES
        reps = (self.body + _PERIOD) // _PERIOD + 1
        self._pattern = (bytes(range(_PERIOD)) * reps)[: self.body + _PERIOD]
        self._pview = memoryview(self._pattern)
        # State of a message checked piece by piece (feed / finish).
        self.seq = -1
        self.sent_ns = 0
        self.pos = 0

    # -- producer --------------------------------------------------------------------------

    def fill(self, dst: memoryview, seq: int, sent_ns: int) -> None:
        """Write message ``seq`` into ``dst`` (a writable byte view of exactly ``size``)."""
        _HEADER.pack_into(dst, 0, seq, sent_ns)
        at = seq % _PERIOD
        dst[HEADER_BYTES:] = self._pview[at : at + self.body]

    def fill_chunked(
        self,
        dst: memoryview,
        seq: int,
        sent_ns: int,
        chunk: int,
        publish: Callable[[int], None],
    ) -> None:
        """Like :meth:`fill`, calling ``publish(bytes_written)`` after each ``chunk`` bytes."""
        _HEADER.pack_into(dst, 0, seq, sent_ns)
        at = seq % _PERIOD - HEADER_BYTES
        pview = self._pview
        pos = HEADER_BYTES
        size = self.size
        while pos < size:
            end = min(pos + chunk, size)
            dst[pos:end] = pview[at + pos : at + end]
            pos = end
            publish(pos)

    # -- consumer --------------------------------------------------------------------------

    def check(self, view: memoryview) -> tuple[int, int]:
        """Read and check a whole message; returns ``(seq, sent_ns)``."""
        if len(view) != self.size:
            raise CheckFailed(f"message of {len(view)} bytes, expected {self.size}")
        seq, sent = _HEADER.unpack_from(view, 0)
        if not self._pattern.startswith(view[HEADER_BYTES:], seq % _PERIOD):
            raise CheckFailed(f"message {seq} is torn, stale or corrupt")
        return seq, sent

    def feed(self, piece: memoryview) -> None:
        """Check the next piece of a message that arrives in pieces (the first holds the header)."""
        pos = self.pos
        if pos == 0:
            if len(piece) < HEADER_BYTES:
                raise CheckFailed("first piece is shorter than the header")
            self.seq, self.sent_ns = _HEADER.unpack_from(piece, 0)
            body = piece[HEADER_BYTES:]
            start = self.seq % _PERIOD
        else:
            body = piece
            start = self.seq % _PERIOD + pos - HEADER_BYTES
        if not self._pattern.startswith(body, start):
            raise CheckFailed(f"message {self.seq} is torn, stale or corrupt at byte {pos}")
        self.pos = pos + len(piece)

    def finish(self) -> tuple[int, int]:
        """End a message checked piece by piece; returns ``(seq, sent_ns)``."""
        if self.pos != self.size:
            raise CheckFailed(f"message {self.seq} has {self.pos} bytes, expected {self.size}")
        self.pos = 0
        return self.seq, self.sent_ns
