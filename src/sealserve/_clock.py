"""Injectable time.

Everything that reads the time takes a ``clock=`` argument so that tests move time forward
instead of sleeping.  ``time()`` is wall-clock seconds since the epoch (for timestamps that
cross machines: signed requests, nonce expiry, TTLs); ``monotonic()`` is for durations.
"""

from __future__ import annotations

import threading
import time as _time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time."""

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that only moves when told to; thread-safe.

    >>> clock = ManualClock(start=1_700_000_000.0)
    >>> clock.advance(5)
    >>> clock.time()
    1700000005.0
    """

    def __init__(self, *, start: float = 1_700_000_000.0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        self._lock = threading.Lock()
        self._wall = float(start)
        self._mono = 0.0

    def time(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (which must not be negative)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def __repr__(self) -> str:
        return f"ManualClock(time={self._wall!r}, monotonic={self._mono!r})"
