"""Every request limit of the KeyService, in one place: named budgets of token buckets.

Each budget is charged by *who* a request is once the KeyService knows it, and no budget is
shared between kinds of traffic, so no flood of one kind can refuse another:

=================  ==========================================  =================================
budget             charged per                                 when
=================  ==========================================  =================================
``signed``         verified principal (rate, and a quota of    a signed request, after its
                   requests per replay window)                 signature verified and before its
                                                               nonce is remembered anywhere
``revocation``     verified principal (a bucket of its own)    a revoke or a withdrawn request
                                                               key, instead of ``signed``
``registration``   client address                              ``POST /v1/principals``, first
``attestation``    client address                              ``GET /v1/attestation``
``release``        attested runtime key                        a release, after its evidence
                                                               verified (so only the runtime
                                                               that holds the key spends it)
``runtime``        attested runtime key                        a revocation poll, after it
                                                               opened under that key's session
                                                               key
=================  ==========================================  =================================

Challenges have no budget: one costs an HMAC and stores nothing (as cheap as ``/healthz``);
a per-address budget on them let any local process that flooded ``POST /v1/challenges``
starve every runtime of that node (issue 10, item 6).  Floods of cheap unauthenticated
requests in general are a matter for the HTTP server's per-source limits.

The buckets are each process's own: a KeyService of N processes admits up to N times the rate
from a principal whose connections land on all of them.  Each map of buckets is bounded (least
recently used dropped, which gives a principal seen rarely a full bucket again).
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve.config import KeyServiceSettings

__all__ = ["Budget", "RateLimiter", "RequestLimits"]


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


class Budget(enum.Enum):
    """The KeyService's request budgets (see the module docstring)."""

    SIGNED = "signed"
    REVOCATION = "revocation"
    REGISTRATION = "registration"
    ATTESTATION = "attestation"
    RELEASE = "release"
    RUNTIME = "runtime"


class RequestLimits:
    """The budgets of one KeyService process, from its settings."""

    def __init__(self, settings: KeyServiceSettings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        s = settings

        def bucket(rate: float, burst: int) -> RateLimiter:
            return RateLimiter(rate_per_s=rate, burst=burst, clock=clock)

        # A principal's share of the replay memory: at most ``signed_requests_per_window``
        # nonces per replay window (a nonce lives one to two windows: its timestamp may be up
        # to a window ahead), whatever its short-term rate allows.
        quota = s.signed_requests_per_window
        self._buckets: dict[Budget, tuple[RateLimiter, ...]] = {
            Budget.SIGNED: (
                bucket(s.rate_limit_per_s, s.rate_limit_burst),
                bucket(quota / s.replay_window_s, quota),
            ),
            Budget.REVOCATION: (bucket(s.revocations_per_s, s.revocation_burst),),
            Budget.REGISTRATION: (bucket(s.registrations_per_s, s.registration_burst),),
            Budget.ATTESTATION: (bucket(s.rate_limit_per_s, s.rate_limit_burst),),
            Budget.RELEASE: (bucket(s.runtime_releases_per_s, s.runtime_release_burst),),
            Budget.RUNTIME: (bucket(s.runtime_polls_per_s, s.runtime_poll_burst),),
        }

    def take(self, budget: Budget, who: str) -> float:
        """Charge one request of ``who`` to ``budget``: 0.0 when allowed, else the seconds to
        wait before retrying (a refused request is charged to no later bucket)."""
        for limiter in self._buckets[budget]:
            wait = limiter.acquire(who)
            if wait > 0:
                return wait
        return 0.0
