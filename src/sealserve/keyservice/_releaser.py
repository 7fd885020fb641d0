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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve.crypto import HpkeSuite, Identity, wrap
from sealserve.errors import AccessDenied, KeyServiceError
from sealserve.keyservice._judge import EvidenceJudge, VerifiedEvidence
from sealserve.keyservice._metrics import Metrics
from sealserve.keyservice._store import AuditEntry, PairRecords
from sealserve.keyservice._vault import Vault
from sealserve.protocol import (
    ReleaseIn,
    ReleaseOut,
    WrappedPairKeys,
    wire,
)

__all__ = ["Denied", "ReleaseRequest", "Releaser"]

_MAX_EVIDENCE_BYTES = 32 * 1024
_R = TypeVar("_R")
#: Opened (unsealed and parsed) records kept; each is a few hundred bytes.
_OPENED_CACHE = 4096
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
    runtime_key_id: str = ""

    def __post_init__(self) -> None:
        if not self.runtime_key_id:
            object.__setattr__(self, "runtime_key_id", wire.fingerprint(self.runtime_key))


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
        revocation_check_s: float,
        session_keys: Callable[[str], bytes],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._vault = vault
        self._verifier = verifier
        self._identity = identity
        self._metrics = metrics
        self._keyservice_id = keyservice_id
        self._ttl = float(release_ttl_s)
        self._check_s = float(revocation_check_s)
        self._session_keys = session_keys
        self._clock = clock
        decoy_policy = verifier.policy_dict(verifier.decoy_policy())
        self._decoy_grant = vault.seal("decoy", _DECOY, wire.canonical_json(decoy_policy))
        self._decoy_request_key = vault.seal(
            "decoy",
            _DECOY,
            wire.canonical_json({"key": wire.b64encode(bytes(32)), "policy": decoy_policy}),
        )
        self._decoy_model_key = vault.seal("decoy", _DECOY, bytes(32))
        self._opened: OrderedDict[tuple[str, tuple[tuple[str, str], ...], bytes], object] = (
            OrderedDict()
        )

    # -- steps ------------------------------------------------------------------------------

    def parse(self, body: bytes) -> ReleaseRequest:
        """The release request in ``body``, or the denial (reason ``malformed``)."""
        try:
            doc = ReleaseIn.from_json(body)
            nonce, evidence, runtime_key = doc.nonce, doc.evidence, doc.runtime_public_key
            pairs: list[tuple[str, str]] = []
            for item in doc.pairs:  # the ids matched their patterns as a whole when parsed
                pairs.append((item.user_id, item.model_id))
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
    ) -> tuple[ReleaseOut, list[AuditEntry]]:
        """The signed response and its audit entries, or the denial after equal work."""
        now = self._clock.time()
        reason: str | None = None
        keys: list[WrappedPairKeys] = []
        audit: list[AuditEntry] = []
        session = self._session_keys(request.runtime_key_id)
        for rec in records:
            pair_reason, entry = self._pair(request, verified, rec, session)
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
        unsigned = ReleaseOut(
            keyservice_id=self._keyservice_id,
            runtime_key_id=request.runtime_key_id,
            nonce=request.nonce,
            measurement=verified.measurement,
            revocation_epoch=epoch,
            issued_at=now,
            ttl_s=self._ttl,
            expires_at=now + self._ttl,
            revocation_check_s=self._check_s,
            keys=tuple(keys),
            signature=b"",
        )
        payload = wire.release_signing_payload(unsigned.to_dict())
        signature = self._identity.sign(payload)
        return dataclasses.replace(unsigned, signature=signature), audit

    # -- one pair ---------------------------------------------------------------------------

    def _pair(
        self, request: ReleaseRequest, verified: VerifiedEvidence, rec: PairRecords, session: bytes
    ) -> tuple[str | None, WrappedPairKeys]:
        reason: str | None = None
        mid, uid = rec.model_id, rec.user_id
        # The grant: the owner's runtime policy.
        if rec.grant is None:
            reason = "not_granted"
            owner_policy = self._open("decoy", _DECOY, self._decoy_grant, self._grant_record)
        else:
            row = {"model_id": mid, "user_id": uid}
            owner_policy = self._open("grant", row, rec.grant, self._grant_record)
        owner_ok = self._verifier.accepts(verified, owner_policy)
        # The user's request key and its policy.
        if rec.request_key is None:
            reason = reason or "no_request_key"
            rk = self._open("decoy", _DECOY, self._decoy_request_key, self._request_key_record)
        else:
            row = {"model_id": mid, "user_id": uid}
            rk = self._open("request-key", row, rec.request_key, self._request_key_record)
        request_key, user_policy = rk
        user_ok = self._verifier.accepts(verified, user_policy)
        # The model's current key.
        if rec.model_key is None or rec.model_key_version is None:
            reason = reason or "no_model_key"
            model_key = self._open("decoy", _DECOY, self._decoy_model_key, bytes)
        else:
            row = {"model_id": mid, "version": str(rec.model_key_version)}
            model_key = self._open("model-key", row, rec.model_key, bytes)
        if not owner_ok:
            reason = reason or "owner_policy"
        if not user_ok:
            reason = reason or "user_policy"
        mk_version = rec.model_key_version or 0
        rk_version = rec.request_key_version or 0
        entry = WrappedPairKeys(
            user_id=uid,
            model_id=mid,
            model_key_version=mk_version,
            request_key_version=rk_version,
            wrapped_keys=self._wrap(
                model_key + request_key + session, mid, uid, mk_version, rk_version, request
            ),
        )
        return reason, entry

    def _open(
        self, kind: str, row: dict[str, str], sealed: bytes, transform: Callable[[bytes], _R]
    ) -> _R:
        """Unseal a record and parse it, through a bounded cache keyed by the sealed bytes
        (the same bytes always open to the same value; decoys are cached alike)."""
        key = (kind, tuple(sorted(row.items())), sealed)
        hit = self._opened.get(key)
        if hit is not None:
            self._opened.move_to_end(key)
            return cast(_R, hit)
        try:
            value = transform(self._vault.unseal(kind, row, sealed))
        except KeyServiceError:
            raise self._deny("store") from None
        except (ValueError, KeyError, TypeError):
            raise self._deny("store") from None
        self._opened[key] = value
        while len(self._opened) > _OPENED_CACHE:
            self._opened.popitem(last=False)
        return value

    def _grant_record(self, plaintext: bytes) -> Any:
        return self._verifier.parse_policy(json.loads(plaintext))

    def _request_key_record(self, plaintext: bytes) -> tuple[bytes, Any]:
        doc = json.loads(plaintext)
        key = wire.b64decode(doc["key"], name="request key")
        return key, self._verifier.parse_policy(doc["policy"])

    def _wrap(
        self,
        secret: bytes,
        mid: str,
        uid: str,
        mk_version: int,
        rk_version: int,
        req: ReleaseRequest,
    ) -> bytes:
        info = wire.release_info(
            model_id=mid,
            user_id=uid,
            model_key_version=mk_version,
            request_key_version=rk_version,
            runtime_key=req.runtime_key,
        )
        try:
            return wrap(req.runtime_key, secret, info=info, suite=req.suite)
        except ValueError:
            raise self._deny("malformed") from None

    def _deny(self, reason: str, **detail: Any) -> Denied:
        return Denied(reason, **detail)
