"""Per-principal limits: a token-bucket rate limiter and the store of outstanding challenges.

Both are in memory, bounded and driven by an injected clock.  A "principal" here is the
principal id of a signed request, or for the unsigned runtime endpoints (challenge, release,
attestation) the client address the service sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import secrets
import threading
from collections import OrderedDict, deque

from sealserve._clock import SYSTEM_CLOCK, Clock

__all__ = ["Challenge", "ChallengeStore", "RateLimiter"]

#: Bytes of a challenge nonce.
NONCE_BYTES = 32


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


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    expires_at: float


class ChallengeStore:
    """Single-use nonces with an expiry, at most ``max_outstanding`` per principal.

    ``issue`` returns ``None`` when the principal already has that many unexpired, unused
    challenges (the caller answers 429).  ``redeem`` consumes a nonce: it succeeds once, before
    the expiry, and never again.  At most ``max_total`` challenges are outstanding in all;
    past that the oldest are dropped, which only makes their holders ask again.
    """

    def __init__(
        self,
        *,
        ttl_s: float,
        max_outstanding: int,
        clock: Clock = SYSTEM_CLOCK,
        max_total: int = 100_000,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, got {max_outstanding!r}")
        if max_total < max_outstanding:
            raise ValueError(f"max_total must be >= max_outstanding, got {max_total!r}")
        self._ttl = float(ttl_s)
        self._max = max_outstanding
        self._max_total = max_total
        self._clock = clock
        self._lock = threading.Lock()
        # nonce -> (principal, expires_at), in order of issue (so expiry order too)
        self._pending: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._by_principal: dict[str, deque[bytes]] = {}

    @property
    def ttl_s(self) -> float:
        return self._ttl

    def outstanding(self, principal: str | None = None) -> int:
        with self._lock:
            self._expire(self._clock.time())
            if principal is None:
                return len(self._pending)
            return len(self._by_principal.get(principal, ()))

    def issue(self, principal: str) -> Challenge | None:
        now = self._clock.time()
        with self._lock:
            self._expire(now)
            mine = self._by_principal.setdefault(principal, deque())
            if len(mine) >= self._max:
                return None
            nonce = secrets.token_bytes(NONCE_BYTES)
            expires = now + self._ttl
            self._pending[nonce] = (principal, expires)
            mine.append(nonce)
            while len(self._pending) > self._max_total:
                old, (owner, _) = self._pending.popitem(last=False)
                self._forget(owner, old)
        return Challenge(nonce=nonce, expires_at=expires)

    def redeem(self, nonce: bytes) -> bool:
        """Consume ``nonce``: true exactly once, while it has not expired."""
        now = self._clock.time()
        with self._lock:
            entry = self._pending.pop(bytes(nonce), None)
            if entry is None:
                # Compare against something anyway: the same work as for a known nonce.
                hmac.compare_digest(nonce, nonce)
                return False
            principal, expires = entry
            self._forget(principal, bytes(nonce))
            return now < expires

    def _expire(self, now: float) -> None:
        while self._pending:
            nonce, (principal, expires) = next(iter(self._pending.items()))
            if expires > now:
                break
            self._pending.popitem(last=False)
            self._forget(principal, nonce)

    def _forget(self, principal: str, nonce: bytes) -> None:
        mine = self._by_principal.get(principal)
        if mine is None:
            return
        with contextlib.suppress(ValueError):
            mine.remove(nonce)
        if not mine:
            del self._by_principal[principal]
