"""Rate limiter and challenge store, driven by a manual clock."""

from __future__ import annotations

import pytest

from sealserve._clock import ManualClock
from sealserve.keyservice._limits import ChallengeStore, RateLimiter


def test_rate_limiter_burst_then_rate() -> None:
    clock = ManualClock()
    limiter = RateLimiter(rate_per_s=10, burst=3, clock=clock)
    assert [limiter.acquire("p") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("p")
    assert wait == pytest.approx(0.1)
    assert limiter.acquire("q") == 0.0  # another principal has its own bucket
    clock.advance(0.1)
    assert limiter.acquire("p") == 0.0
    assert limiter.acquire("p") > 0


def test_rate_limiter_bounds_its_memory() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=ManualClock(), max_principals=2)
    for name in ("a", "b", "c"):
        assert limiter.acquire(name) == 0.0
    assert limiter.acquire("a") == 0.0  # "a" was dropped, so it comes back full
    assert limiter.acquire("c") > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"rate_per_s": 0, "burst": 1}, "rate_per_s"), ({"rate_per_s": 1, "burst": 0}, "burst")],
)
def test_rate_limiter_validates(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_challenges_are_single_use_and_expire() -> None:
    clock = ManualClock()
    store = ChallengeStore(ttl_s=30, max_outstanding=4, clock=clock)
    first = store.issue("p")
    assert first is not None
    assert len(first.nonce) == 32
    assert first.expires_at == clock.time() + 30
    assert store.redeem(first.nonce) is True
    assert store.redeem(first.nonce) is False  # used
    late = store.issue("p")
    assert late is not None
    clock.advance(30)
    assert store.redeem(late.nonce) is False  # expired
    assert store.redeem(b"\x00" * 32) is False  # never issued


def test_outstanding_challenges_are_limited_per_principal() -> None:
    clock = ManualClock()
    store = ChallengeStore(ttl_s=10, max_outstanding=2, clock=clock)
    a, b = store.issue("p"), store.issue("p")
    assert a is not None
    assert b is not None
    assert store.issue("p") is None
    assert store.issue("q") is not None
    assert store.outstanding("p") == 2
    assert store.outstanding() == 3
    assert store.redeem(a.nonce)
    assert store.issue("p") is not None
    clock.advance(10)  # all expire and free their places
    assert store.outstanding() == 0
    assert store.issue("p") is not None


def test_total_outstanding_is_bounded() -> None:
    store = ChallengeStore(ttl_s=10, max_outstanding=1, clock=ManualClock(), max_total=2)
    oldest = store.issue("a")
    assert oldest is not None
    store.issue("b")
    store.issue("c")
    assert store.outstanding() == 2
    assert store.redeem(oldest.nonce) is False
