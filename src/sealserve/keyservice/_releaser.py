"""The release decision: parse, verify the evidence once, then decide every pair with equal work.

For each requested (user, model) pair the service needs a grant (whose owner policy admits the
runtime's evidence), the user's request key (whose user policy admits it too) and the model's
current key.  A pair that lacks any of them is processed against decoy records sealed at
start-up: the same unseals, policy checks and HPKE wraps happen whether a principal, model or
grant exists or not, and the answer to any failure is the one fixed denial.  The reason goes to
the log at DEBUG and to the denials-by-reason metric.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve.crypto import HpkeSuite, Identity, wrap
from sealserve.errors import AccessDenied, KeyServiceError
from sealserve.keyservice import _wire as wire
from sealserve.keyservice._judge import EvidenceJudge, VerifiedEvidence
from sealserve.keyservice._metrics import Metrics
from sealserve.keyservice._store import AuditEntry, PairRecords
from sealserve.keyservice._vault import Vault

__all__ = ["Denied", "ReleaseRequest", "Releaser"]

_MAX_EVIDENCE_BYTES = 32 * 1024
_SUITES_BY_KEY_SIZE = {suite.public_key_size: suite for suite in HpkeSuite}
_DECOY = {"model_id": "decoy", "user_id": "decoy", "version": "0"}


class Denied(AccessDenied):
    """The fixed denial, with the reason kept for the log and the metrics (never sent)."""

    def __init__(self, reason: str, **detail: Any) -> None:
        super().__init__()
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseRequest:
    nonce: bytes
    evidence: bytes
    runtime_key: bytes
    pairs: tuple[tuple[str, str], ...]  # (user_id, model_id)
    suite: HpkeSuite

    @property
    def runtime_key_id(self) -> str:
        return wire.fingerprint(self.runtime_key)

    @property
    def pair_tuples(self) -> list[tuple[str, str]]:
        return list(self.pairs)


class Releaser:
    """Stateless apart from its decoys; one per service."""

    def __init__(
        self,
        *,
        vault: Vault,
        verifier: EvidenceJudge,
        identity: Identity,
        metrics: Metrics,
        keyservice_id: str,
        release_ttl_s: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._vault = vault
        self._verifier = verifier
        self._identity = identity
        self._metrics = metrics
        self._keyservice_id = keyservice_id
        self._ttl = float(release_ttl_s)
        self._clock = clock
        decoy_policy = verifier.policy_dict(verifier.decoy_policy())
        self._decoy_grant = vault.seal("decoy", _DECOY, wire.canonical_json(decoy_policy))
        self._decoy_request_key = vault.seal(
            "decoy",
            _DECOY,
            wire.canonical_json({"key": wire.b64encode(bytes(32)), "policy": decoy_policy}),
        )
        self._decoy_model_key = vault.seal("decoy", _DECOY, bytes(32))

    # -- steps ------------------------------------------------------------------------------

    def parse(self, body: bytes) -> ReleaseRequest:
        """The release request in ``body``, or the denial (reason ``malformed``)."""
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict) or set(doc) != {
                "nonce",
                "evidence",
                "runtime_public_key",
                "pairs",
            }:
                raise ValueError("fields")
            nonce = wire.b64decode(doc["nonce"], name="nonce")
            evidence = wire.b64decode(doc["evidence"], name="evidence")
            runtime_key = wire.b64decode(doc["runtime_public_key"], name="runtime_public_key")
            raw_pairs = doc["pairs"]
            if not isinstance(raw_pairs, list) or not 1 <= len(raw_pairs) <= wire.MAX_PAIRS:
                raise ValueError("pairs")
            pairs: list[tuple[str, str]] = []
            for item in raw_pairs:
                if not isinstance(item, dict) or set(item) != {"user_id", "model_id"}:
                    raise ValueError("pair")
                owner, name = wire.split_model_id(item["model_id"])
                user = item["user_id"]
                wire.model_id(user, "x")  # validates the user id's form
                pairs.append((user, wire.model_id(owner, name)))
            if len(set(pairs)) != len(pairs):
                raise ValueError("duplicate pairs")
            if len(evidence) > _MAX_EVIDENCE_BYTES:
                raise ValueError("evidence size")
            suite = _SUITES_BY_KEY_SIZE[len(runtime_key)]
        except (ValueError, TypeError, KeyError, RecursionError):
            raise self._deny("malformed") from None
        return ReleaseRequest(nonce, evidence, runtime_key, tuple(pairs), suite)

    def verify_evidence(self, request: ReleaseRequest) -> VerifiedEvidence:
        """Check the evidence once: platform signature and report_data binding the runtime's
        key and the nonce.  Policies are evaluated per pair in :meth:`decide`."""
        verified = self._verifier.verify(
            request.evidence, bound_key=request.runtime_key, nonce=request.nonce
        )
        if verified is None:
            raise self._deny("evidence")
        return verified

    def decide(
        self,
        request: ReleaseRequest,
        verified: VerifiedEvidence,
        epoch: int,
        records: Sequence[PairRecords],
    ) -> tuple[dict[str, Any], list[AuditEntry]]:
        """The signed response and its audit entries, or the denial after equal work."""
        now = self._clock.time()
        reason: str | None = None
        keys: list[dict[str, Any]] = []
        audit: list[AuditEntry] = []
        for rec in records:
            pair_reason, entry = self._pair(request, verified, rec)
            reason = reason or pair_reason
            keys.append(entry)
            audit.append(
                AuditEntry(
                    at=now,
                    event="release",
                    actor=request.runtime_key_id,
                    model_id=rec.model_id,
                    user_id=rec.user_id,
                    key_version=rec.model_key_version,
                    request_key_version=rec.request_key_version,
                    measurement=verified.measurement,
                    epoch=epoch,
                )
            )
        if reason is not None:
            raise self._deny(reason, pairs=len(records), measurement=verified.measurement)
        body: dict[str, Any] = {
            "keyservice_id": self._keyservice_id,
            "runtime_key_id": request.runtime_key_id,
            "nonce": wire.b64encode(request.nonce),
            "measurement": verified.measurement,
            "revocation_epoch": epoch,
            "issued_at": now,
            "ttl_s": self._ttl,
            "expires_at": now + self._ttl,
            "keys": keys,
        }
        body["signature"] = wire.b64encode(self._identity.sign(wire.release_signing_payload(body)))
        return body, audit

    # -- one pair ---------------------------------------------------------------------------

    def _pair(
        self, request: ReleaseRequest, verified: VerifiedEvidence, rec: PairRecords
    ) -> tuple[str | None, dict[str, Any]]:
        reason: str | None = None
        mid, uid = rec.model_id, rec.user_id
        # The grant: the owner's runtime policy.
        if rec.grant is None:
            reason = "not_granted"
            grant = self._unseal("decoy", _DECOY, self._decoy_grant)
        else:
            grant = self._unseal("grant", {"model_id": mid, "user_id": uid}, rec.grant)
        owner_ok = self._verifier.accepts(verified, self._verifier.parse_policy(json.loads(grant)))
        # The user's request key and its policy.
        if rec.request_key is None:
            reason = reason or "no_request_key"
            raw = self._unseal("decoy", _DECOY, self._decoy_request_key)
        else:
            raw = self._unseal("request-key", {"model_id": mid, "user_id": uid}, rec.request_key)
        rk_doc = json.loads(raw)
        request_key = wire.b64decode(rk_doc["key"], name="request key")
        user_ok = self._verifier.accepts(verified, self._verifier.parse_policy(rk_doc["policy"]))
        # The model's current key.
        if rec.model_key is None or rec.model_key_version is None:
            reason = reason or "no_model_key"
            model_key = self._unseal("decoy", _DECOY, self._decoy_model_key)
        else:
            row = {"model_id": mid, "version": str(rec.model_key_version)}
            model_key = self._unseal("model-key", row, rec.model_key)
        if not owner_ok:
            reason = reason or "owner_policy"
        if not user_ok:
            reason = reason or "user_policy"
        mk_version = rec.model_key_version or 0
        rk_version = rec.request_key_version or 0
        entry = {
            "user_id": uid,
            "model_id": mid,
            "model_key_version": mk_version,
            "request_key_version": rk_version,
            "wrapped_model_key": self._wrap("model-key", model_key, mid, uid, mk_version, request),
            "wrapped_request_key": self._wrap(
                "request-key", request_key, mid, uid, rk_version, request
            ),
        }
        return reason, entry

    def _unseal(self, kind: str, row: dict[str, str], sealed: bytes) -> bytes:
        try:
            return self._vault.unseal(kind, row, sealed)
        except KeyServiceError:
            raise self._deny("store") from None

    def _wrap(
        self, kind: str, secret: bytes, mid: str, uid: str, version: int, req: ReleaseRequest
    ) -> str:
        info = wire.release_info(
            kind, model_id=mid, user_id=uid, version=version, runtime_key=req.runtime_key
        )
        try:
            return wire.b64encode(wrap(req.runtime_key, secret, info=info, suite=req.suite))
        except ValueError:
            raise self._deny("malformed") from None

    def _deny(self, reason: str, **detail: Any) -> Denied:
        return Denied(reason, **detail)
