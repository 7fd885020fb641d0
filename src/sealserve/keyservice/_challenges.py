"""Stateless challenges: nonces the KeyService recognises without remembering them.

A nonce is ``version || expires_at || random || tag`` (41 bytes)::

    version     1 byte    1
    expires_at  8 bytes   Unix time in milliseconds, big-endian
    random      16 bytes
    tag         16 bytes  HMAC-SHA256(challenge key, the 25 bytes before it), truncated

The challenge key is derived from the master key (:meth:`~sealserve.keyservice.Vault.derive`),
so every process of one KeyService (on one machine or behind a load balancer) issues and
accepts the same challenges, and issuing one stores nothing.  :meth:`ChallengeIssuer.check`
costs one HMAC.  Single use is not decided here: the release that uses a nonce inserts it into
the database's ``used_nonces`` in the same transaction as its audit rows, and the table's key
refuses a second insert, whichever process tries it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import struct
from typing import Final

from sealserve._clock import SYSTEM_CLOCK, Clock

__all__ = ["NONCE_BYTES", "Challenge", "ChallengeIssuer"]

_VERSION: Final = 1
_RANDOM_BYTES: Final = 16
_TAG_BYTES: Final = 16
_HEADER: Final = struct.Struct(">BQ")
_SIGNED_BYTES: Final = _HEADER.size + _RANDOM_BYTES
#: Bytes of a challenge nonce.
NONCE_BYTES: Final = _SIGNED_BYTES + _TAG_BYTES
_KEY_BYTES: Final = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    expires_at: float


class ChallengeIssuer:
    """Issues nonces valid for ``ttl_s`` and tells authentic, unexpired ones from the rest."""

    def __init__(self, *, key: bytes, ttl_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
            raise ValueError(f"key must be {_KEY_BYTES} bytes")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        self._key = key
        self._ttl = float(ttl_s)
        self._clock = clock

    @property
    def ttl_s(self) -> float:
        return self._ttl

    def issue(self) -> Challenge:
        expires_ms = int((self._clock.time() + self._ttl) * 1000)
        signed = _HEADER.pack(_VERSION, expires_ms) + secrets.token_bytes(_RANDOM_BYTES)
        return Challenge(nonce=signed + self._tag(signed), expires_at=expires_ms / 1000)

    def check(self, nonce: bytes) -> float | None:
        """The nonce's expiry if this KeyService issued it and it has not expired; else None.

        Authentic or not, well-formed or not, a nonce costs the same one HMAC.
        """
        data = bytes(nonce)
        well_formed = len(data) == NONCE_BYTES
        signed = data[:_SIGNED_BYTES] if well_formed else bytes(_SIGNED_BYTES)
        expected = self._tag(signed)
        if not (hmac.compare_digest(expected, data[_SIGNED_BYTES:]) and well_formed):
            return None
        version, expires_ms = _HEADER.unpack_from(signed)
        expires_at = float(expires_ms) / 1000
        if version != _VERSION or self._clock.time() >= expires_at:
            return None
        return expires_at

    def _tag(self, signed: bytes) -> bytes:
        return hmac.digest(self._key, signed, hashlib.sha256)[:_TAG_BYTES]

    def __repr__(self) -> str:
        return f"ChallengeIssuer(ttl_s={self._ttl!r})"
