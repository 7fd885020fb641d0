"""Verifying the KeyService itself: its evidence must bind its two public keys and our nonce.

Owners, users and runtimes all start here: fetch ``GET /v1/attestation?nonce=…`` with a fresh
nonce, and accept the KeyService only if its evidence satisfies a pinned policy (by default
the measurement of the ``keyservice`` entry of the installed code, on the pinned platform).
Only then do they wrap keys to its HPKE key or trust responses signed by its Ed25519 key.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from sealserve.attest import (
    Evidence,
    Policy,
    TrustAnchors,
    measure,
    report_data_for,
    verify_evidence,
)
from sealserve.crypto import HpkeSuite
from sealserve.errors import AttestationError, KeyServiceError
from sealserve.protocol import _wire as wire
from sealserve.protocol._messages import AttestationOut

__all__ = [
    "AttestedKeyService",
    "attestation_nonce",
    "default_keyservice_pin",
    "verify_keyservice",
]


@dataclasses.dataclass(frozen=True, slots=True)
class AttestedKeyService:
    """A KeyService whose evidence was verified: the keys it proved it holds."""

    keyservice_id: str
    hpke_public_key: bytes
    hpke_suite: HpkeSuite
    signing_public_key: bytes
    measurement: str


def attestation_nonce() -> bytes:
    """A fresh nonce for ``GET /v1/attestation``."""
    return secrets.token_bytes(32)


def verify_keyservice(
    body: bytes,
    *,
    nonce: bytes,
    policy: Policy,
    trust: TrustAnchors,
    now: float,
) -> AttestedKeyService:
    """Check a ``GET /v1/attestation`` response against ``policy``; the fixed
    :class:`~sealserve.errors.AttestationError` when the evidence does not satisfy it."""
    try:
        doc = AttestationOut.from_json(body)
        evidence = Evidence.from_bytes(doc.evidence)
        hpke_key, signing_key = doc.hpke_public_key, doc.signing_public_key
        suite = HpkeSuite[doc.hpke_suite]
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyServiceError("the KeyService's attestation response is malformed") from exc
    binding = wire.keyservice_binding(hpke_key, signing_key)
    claims = verify_evidence(
        evidence, policy, report_data=report_data_for(binding, nonce), trust=trust, now=now
    )
    if len(hpke_key) != suite.public_key_size or len(signing_key) != 32:
        raise AttestationError()
    return AttestedKeyService(
        keyservice_id=wire.fingerprint(binding),
        hpke_public_key=hpke_key,
        hpke_suite=suite,
        signing_public_key=signing_key,
        measurement=claims.measurement,
    )


def default_keyservice_pin(
    data_dir: str | os.PathLike[str], *, config: Mapping[str, str] | None = None
) -> tuple[Policy, TrustAnchors]:
    """The default pin: the ``keyservice`` entry of the installed code, launched with
    ``config`` (empty: default settings), on the simulated platform of ``data_dir``."""
    policy = Policy(measurements=frozenset({measure("keyservice", config=config or {})}))
    return policy, TrustAnchors.from_data_dir(Path(data_dir))
