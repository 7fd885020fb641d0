"""The per-principal rate limiter, driven by a manual clock."""

from __future__ import annotations

import pytest

from sealserve._clock import ManualClock
from sealserve.keyservice._limits import RateLimiter


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
