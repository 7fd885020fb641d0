"""Stateless challenges: authentic and unexpired, or refused; nothing is remembered."""

from __future__ import annotations

import pytest

from sealserve._clock import ManualClock
from sealserve.keyservice._challenges import NONCE_BYTES, ChallengeIssuer

KEY = bytes(range(32))


def test_an_issued_nonce_checks_until_it_expires() -> None:
    clock = ManualClock(start=1_800_000_000.0)
    issuer = ChallengeIssuer(key=KEY, ttl_s=30, clock=clock)
    challenge = issuer.issue()
    assert len(challenge.nonce) == NONCE_BYTES
    assert challenge.expires_at == pytest.approx(clock.time() + 30, abs=1e-3)
    assert issuer.check(challenge.nonce) == challenge.expires_at
    assert issuer.check(challenge.nonce) == challenge.expires_at  # single use is the store's
    clock.advance(29.9)
    assert issuer.check(challenge.nonce) == challenge.expires_at
    clock.advance(0.2)
    assert issuer.check(challenge.nonce) is None


def test_every_process_with_the_same_key_accepts_the_nonce() -> None:
    clock = ManualClock(start=1_800_000_000.0)
    first = ChallengeIssuer(key=KEY, ttl_s=30, clock=clock)
    second = ChallengeIssuer(key=KEY, ttl_s=30, clock=clock)
    other = ChallengeIssuer(key=bytes(32), ttl_s=30, clock=clock)
    nonce = first.issue().nonce
    assert second.check(nonce) is not None
    assert other.check(nonce) is None


def test_nonces_are_unique_and_forgeries_are_refused() -> None:
    issuer = ChallengeIssuer(key=KEY, ttl_s=30, clock=ManualClock(start=1_800_000_000.0))
    nonces = {issuer.issue().nonce for _ in range(200)}
    assert len(nonces) == 200
    nonce = next(iter(nonces))
    for forged in (
        b"",
        b"\x00" * 32,  # the old 32-byte form
        b"\x00" * NONCE_BYTES,
        nonce[:-1],
        nonce + b"\x00",
        nonce[:1] + b"\xff" * 8 + nonce[9:],  # a later expiry, same tag
        b"\x02" + nonce[1:],  # another version
    ):
        assert issuer.check(forged) is None, forged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"key": b"short", "ttl_s": 1.0}, "key"), ({"key": KEY, "ttl_s": 0.0}, "ttl_s")],
)
def test_issuer_validates(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChallengeIssuer(**kwargs)  # type: ignore[arg-type]
