"""The real :class:`~sealserve.keyservice._judge.EvidenceJudge`, on the attest layer."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.attest import (
    Evidence,
    Policy,
    TrustAnchors,
    VerifiedClaims,
    evaluate_policy,
    report_data_for,
    verified_claims,
)
from sealserve.errors import AttestationError
from sealserve.keyservice._judge import VerifiedEvidence

__all__ = ["EvidenceVerifier"]

_log = get_logger(__name__)


class EvidenceVerifier:
    """The attest layer's verification, with the trust anchors and clock of the service.

    :meth:`verify` establishes what the evidence proves (the platform's signature, the DCAP,
    SEV-SNP or TPM chain, the Azure CVM's, its age) with ``verified_claims`` and checks that its
    report_data binds the runtime's key and the nonce; no policy is consulted yet.  Each real
    policy is then checked with the pure ``evaluate_policy``.
    """

    def __init__(self, *, trust: TrustAnchors, clock: Clock = SYSTEM_CLOCK) -> None:
        if not isinstance(trust, TrustAnchors):
            raise TypeError(f"trust must be TrustAnchors, got {type(trust).__name__}")
        self._trust = trust
        self._clock = clock

    def verify(self, evidence: bytes, *, bound_key: bytes, nonce: bytes) -> VerifiedEvidence | None:
        try:
            parsed = Evidence.from_bytes(evidence)
            expected = report_data_for(bound_key, nonce)
            claims = verified_claims(parsed, trust=self._trust, now=self._clock.time())
        except (AttestationError, ValueError) as exc:
            _log.event("evidence.rejected", level=logging.DEBUG, error=type(exc).__name__)
            return None
        if not hmac.compare_digest(claims.report_data, expected):
            _log.event("evidence.rejected", level=logging.DEBUG, error="report_data")
            return None
        return VerifiedEvidence(measurement=claims.measurement, claims=claims)

    def parse_policy(self, doc: Mapping[str, Any]) -> Policy:
        if not isinstance(doc, Mapping):
            raise ValueError(f"policy must be an object, got {type(doc).__name__}")
        try:
            return Policy.from_dict(dict(doc))
        except TypeError as exc:
            raise ValueError(f"policy is not a valid runtime policy: {exc}") from exc

    def policy_dict(self, policy: Policy) -> dict[str, Any]:
        return policy.to_dict()

    def accepts(self, verified: VerifiedEvidence, policy: Policy) -> bool:
        claims: VerifiedClaims = verified.claims
        try:
            evaluate_policy(claims, policy, report_data=claims.report_data)
        except AttestationError:
            return False
        return True

    def report_data(self, public_key: bytes, nonce: bytes) -> bytes:
        return report_data_for(public_key, nonce)

    def decoy_policy(self) -> Policy:
        return Policy(measurements=frozenset({"00" * 32}))
