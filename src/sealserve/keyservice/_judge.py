"""How the KeyService judges a runtime's evidence: verify it once, then check each policy.

:class:`EvidenceJudge` is the interface the service uses (the real one is
:class:`~sealserve.keyservice.EvidenceVerifier`, on the attest layer).  A release verifies the
evidence (platform signature, and report_data binding the runtime's key and the challenge
nonce) exactly once, then evaluates the owner's and the user's policy of every pair against the
verified claims, which is pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["EvidenceJudge", "VerifiedEvidence"]


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    """Evidence whose signature and binding were checked; ``claims`` is the attest layer's
    verified form, which policies are evaluated against."""

    measurement: str
    claims: Any


class EvidenceJudge(Protocol):
    def verify(self, evidence: bytes, *, bound_key: bytes, nonce: bytes) -> VerifiedEvidence | None:
        """The verified evidence, or ``None`` when it does not verify (reason logged)."""
        ...

    def parse_policy(self, doc: Mapping[str, Any]) -> Any:
        """A policy from its dict form; ``ValueError`` naming what is wrong."""
        ...

    def policy_dict(self, policy: Any) -> dict[str, Any]:
        """The dict form of a parsed policy (what the store seals)."""
        ...

    def accepts(self, verified: VerifiedEvidence, policy: Any) -> bool:
        """Whether ``policy`` admits the verified evidence (pure)."""
        ...

    def decoy_policy(self) -> Any:
        """A valid policy that admits nothing real: what missing records are checked against."""
        ...

    def report_data(self, public_key: bytes, nonce: bytes) -> bytes:
        """The report_data that binds ``public_key`` and ``nonce``."""
        ...
