"""A fake evidence judge for unit tests: the real interface, a trivially simple evidence format.

Fake evidence is ``canonical_json({"measurement": hex, "report_data": b64})``; it "verifies"
when its report_data is the SHA-512 of the bound key and the nonce.  A fake policy is
``{"measurements": [hex, ...]}``.  Integration tests use the real attest layer instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sealserve.keyservice._judge import VerifiedEvidence
from sealserve.protocol import wire

GOOD = "11" * 32
OTHER = "22" * 32


def fake_report_data(public_key: bytes, nonce: bytes) -> bytes:
    return hashlib.sha512(b"fake" + public_key + b"|" + nonce).digest()


def fake_evidence(measurement: str, report_data: bytes) -> bytes:
    return wire.canonical_json(
        {"measurement": measurement, "report_data": wire.b64encode(report_data)}
    )


class FakeJudge:
    def verify(self, evidence: bytes, *, bound_key: bytes, nonce: bytes) -> VerifiedEvidence | None:
        try:
            doc = json.loads(evidence)
            report_data = wire.b64decode(doc["report_data"])
        except (ValueError, KeyError, TypeError):
            return None
        if report_data != fake_report_data(bound_key, nonce):
            return None
        return VerifiedEvidence(measurement=doc["measurement"], claims=doc["measurement"])

    def parse_policy(self, doc: Mapping[str, Any]) -> frozenset[str]:
        if not isinstance(doc, Mapping) or set(doc) != {"measurements"}:
            raise ValueError("policy must be {'measurements': [...]}")
        values = doc["measurements"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError("measurements must be a list of strings")
        return frozenset(values)

    def policy_dict(self, policy: frozenset[str]) -> dict[str, Any]:
        return {"measurements": sorted(policy)}

    def accepts(self, verified: VerifiedEvidence, policy: frozenset[str]) -> bool:
        return verified.claims in policy

    def decoy_policy(self) -> frozenset[str]:
        return frozenset({"00" * 32})

    def report_data(self, public_key: bytes, nonce: bytes) -> bytes:
        return fake_report_data(public_key, nonce)
