"""Per-principal request rate limits: token buckets, in memory, bounded, on an injected clock.

A "principal" here is the principal id of a signed request, or for the unsigned runtime
endpoints (challenge, release, attestation) the client address the service sees.  The buckets
are each process's own: a KeyService of N processes admits up to N times the rate from a
principal whose connections land on all of them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sealserve._clock import SYSTEM_CLOCK, Clock

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets, one per principal: ``rate_per_s`` sustained, ``burst`` at once.

    At most ``max_principals`` buckets are kept (least recently used are dropped: a dropped
    bucket comes back full, which is the generous direction for a principal seen rarely).
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        clock: Clock = SYSTEM_CLOCK,
        max_principals: int = 100_000,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if max_principals < 1:
            raise ValueError(f"max_principals must be >= 1, got {max_principals!r}")
        self._rate = float(rate_per_s)
        self._burst = float(burst)
        self._clock = clock
        self._max = max_principals
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, principal: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds to wait before retrying."""
        now = self._clock.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(principal, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens >= 1.0:
                wait = 0.0
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self._rate
            self._buckets[principal] = (tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return wait
