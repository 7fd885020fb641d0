"""The KeyService itself, without HTTP: who may do what, and the release protocol.

:class:`KeyService` holds the store, the vault (master key), its HPKE key pair and Ed25519
signing identity (both derived from the master key and bound into its evidence, so every
process of one KeyService is the same attested service), the challenge issuer and the limits.
Its coroutines run on the service's event loop; database work goes to a worker thread.

Nothing that single use depends on lives in this process's memory: challenges are stateless
(:mod:`._challenges`), and the nonces of releases and of signed requests are recorded as used
in the database (:mod:`._claims`), so any number of processes can serve one database.
Every refusal that must not say why raises :class:`Denied` (an
:class:`~sealserve.errors.AccessDenied` that carries the reason for the log and the metrics
only), which the HTTP layer turns into the one fixed 403.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.attest import Policy
from sealserve.config import KeyServiceSettings
from sealserve.crypto import (
    SIGNATURE_HEADER,
    HpkeKeyPair,
    HpkeSuite,
    Identity,
    RequestVerifier,
    SignedRequest,
    SymmetricKey,
    principal_id,
    seal,
    signed_principal,
    unseal,
    unwrap,
    verify_signature,
)
from sealserve.errors import (
    Conflict,
    InvalidEnvelope,
    InvalidSignature,
    NotFound,
    RateLimited,
)
from sealserve.keyservice._audit import AuditChain
from sealserve.keyservice._challenges import Challenge, ChallengeIssuer
from sealserve.keyservice._claims import ClaimWriter
from sealserve.keyservice._judge import EvidenceJudge
from sealserve.keyservice._limits import Budget, RequestLimits
from sealserve.keyservice._metrics import Metrics
from sealserve.keyservice._records import AuditEntry, Claim, audit_values
from sealserve.keyservice._releaser import Denied, Releaser
from sealserve.keyservice._replicas import ReplicaGiver
from sealserve.keyservice._store import PrincipalRow, Store
from sealserve.keyservice._vault import Vault
from sealserve.protocol import (
    AccessChange,
    AttestationOut,
    AuditCheckpoint,
    AuditPage,
    AuditRecord,
    ModelInfo,
    ModelKeyReceipt,
    PrincipalOut,
    ReleaseOut,
    ReplicaOut,
    RequestKeyReceipt,
    RevocationPollIn,
    RevocationPollOut,
    join_model_id,
    wire,
)
from sealserve.protocol import audit as protocol_audit

__all__ = ["EvidenceSource", "KeyService", "Throttled"]

_log = get_logger(__name__)
_T = TypeVar("_T")
#: Most audit entries one page holds.
_AUDIT_PAGE = 1000

#: Produces the KeyService's own evidence (its byte form) for a report_data: ``local_evidence``
#: when it runs launched by the platform.
EvidenceSource = Callable[[bytes], bytes]


def headers_signature(headers: Mapping[str, str]) -> bytes:
    """The signature bytes a signed request carries (64 zero bytes if none parse)."""
    value = _header(headers, SIGNATURE_HEADER)
    try:
        raw = base64.urlsafe_b64decode(value.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    return raw if len(raw) == 64 else bytes(64)


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # a plain mapping with other letter case
        value = next((v for k, v in headers.items() if k.lower() == name), "")
    return value


class Throttled(RateLimited):
    """429, with the seconds after which a retry may succeed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeyService:
    """Access control, key custody and attested release.  See ``docs/keyservice.md``."""

    def __init__(
        self,
        *,
        store: Store,
        vault: Vault,
        evidence_source: EvidenceSource,
        verifier: EvidenceJudge,
        settings: KeyServiceSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        hpke_key: HpkeKeyPair | None = None,
        identity: Identity | None = None,
        db_threads: int = 4,
        replica_policy: Policy | None = None,
    ) -> None:
        if db_threads < 1:
            raise ValueError(f"db_threads must be >= 1, got {db_threads!r}")
        self.settings = settings or KeyServiceSettings()
        self.store = store
        self.vault = vault
        self.clock = clock
        self.metrics = Metrics()
        self._evidence_source = evidence_source
        self._verifier = verifier
        derived_hpke, derived_identity = vault.instance_keys()
        self._hpke = hpke_key or derived_hpke
        self._identity = identity or derived_identity
        self._binding = wire.keyservice_binding(
            self._hpke.public_key_bytes(), self._identity.public_key_bytes
        )
        self.keyservice_id = wire.fingerprint(self._binding)
        # Checks signatures only: the used nonces are the database's (``_claim_request``),
        # recorded after the request passed its principal's limits.
        self._requests = RequestVerifier(replay_window_s=self.settings.replay_window_s, clock=clock)
        self.challenges = ChallengeIssuer(
            key=vault.derive("challenge"), ttl_s=self.settings.challenge_ttl_s, clock=clock
        )
        self.limits = RequestLimits(self.settings, clock=clock)
        self._db_limiter = anyio.CapacityLimiter(db_threads)
        # Revocations wait for no other principal's database work (a lane of their own).
        self._revocation_lane = anyio.CapacityLimiter(1)
        self._inline_reads = store.dialect == "sqlite"
        self._claims = ClaimWriter(
            lambda claims, purge: self._db(self.store.commit_claims, claims, purge_before=purge),
            clock=clock,
        )
        self._principals: dict[str, PrincipalRow] = {}
        # The key that unknown principals' signatures are checked against (equal work).
        self._decoy_key = Identity.generate().public_key_bytes
        self._decoy_message = b"sealserve/keyservice/decoy" * 8
        self._session_root = vault.derive("runtime-session")
        self.audit_chain = AuditChain(vault.derive("audit"))
        store.attach_audit_chain(self.audit_chain)
        self.releaser = Releaser(
            vault=vault,
            verifier=verifier,
            identity=self._identity,
            metrics=self.metrics,
            keyservice_id=self.keyservice_id,
            release_ttl_s=self.settings.release_ttl_s,
            revocation_check_s=self.settings.revocation_check_s,
            session_keys=self.session_key,
            clock=clock,
        )
        # Replicas on other nodes: none unless the policy they must satisfy is given.
        self.replicas = ReplicaGiver(
            vault=vault,
            verifier=verifier,
            identity=self._identity,
            keyservice_id=self.keyservice_id,
            policy=replica_policy,
            clock=clock,
        )

    # -- identity of the service ------------------------------------------------------------

    @property
    def signing_public_key(self) -> bytes:
        return self._identity.public_key_bytes

    @property
    def hpke_public_key(self) -> bytes:
        return self._hpke.public_key_bytes()

    @property
    def hpke_suite(self) -> HpkeSuite:
        return self._hpke.suite

    def sign(self, payload: bytes) -> bytes:
        return self._identity.sign(payload)

    async def attestation(self, nonce: bytes) -> AttestationOut:
        """The service's evidence binding its two public keys and the caller's ``nonce``."""
        if not 16 <= len(nonce) <= 64:
            raise ValueError(f"nonce must be 16 to 64 bytes, got {len(nonce)}")
        report_data = self._verifier.report_data(self._binding, nonce)
        evidence = await anyio.to_thread.run_sync(self._evidence_source, report_data)
        return AttestationOut(
            evidence=evidence,
            hpke_public_key=self.hpke_public_key,
            hpke_suite=self._hpke.suite.name,
            signing_public_key=self.signing_public_key,
            keyservice_id=self.keyservice_id,
        )

    # -- limits and authentication ----------------------------------------------------------

    def limit(self, budget: Budget, who: str) -> None:
        """Charge one request of ``who`` to ``budget``; :class:`Throttled` when it is spent."""
        wait = self.limits.take(budget, who)
        if wait > 0:
            self.metrics.rate_limited.labels(limit=budget.value).inc()
            raise Throttled(f"too many requests; retry after {math.ceil(wait)} s", wait)

    async def authenticate(
        self,
        *,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        budget: Budget = Budget.SIGNED,
    ) -> PrincipalRow:
        """The registered principal that signed this request, or :class:`Denied`.

        In this order: the signature (nothing remembered yet), the principal's ``budget``
        (:class:`Throttled`: a refused request leaves no trace), then its nonce recorded as
        used.  So a principal's traffic spends only its own budgets and its own share of the
        used nonces, and never refuses another principal's request.
        """
        try:
            claimed = signed_principal(headers)
        except InvalidSignature:
            raise Denied("signature") from None
        row = await self._principal(claimed)
        if row is None:
            # The same signature check as for a known principal, against a decoy key.
            with contextlib.suppress(InvalidSignature):
                verify_signature(self._decoy_key, self._decoy_message, headers_signature(headers))
            raise Denied("unknown_principal")
        try:
            signed = self._requests.check(
                row.public_key, method=method, path=path, body=body, headers=headers
            )
        except InvalidSignature:
            raise Denied("signature") from None
        self.limit(budget, claimed)
        await self._claim_request(signed)
        return row

    async def _claim_request(self, signed: SignedRequest) -> None:
        """Record a verified request's nonce as used in the database, so that no process of
        this KeyService accepts the request again."""
        key = hashlib.sha256(
            f"sealserve/request-nonce\0{signed.principal_id}\0{signed.nonce}".encode()
        ).digest()
        expires_at = max(signed.expires_at, self.clock.time() + self.settings.replay_window_s)
        if not await self._claims.commit(Claim(nonce=key, expires_at=expires_at)):
            raise Denied("signature")

    async def _principal(self, pid: str) -> PrincipalRow | None:
        cached = self._principals.get(pid)
        if cached is not None:
            return cached
        row = await self._db(self.store.get_principal, pid)
        if row is not None:  # principals are never deleted, so a hit may be cached
            self._principals[pid] = row
        return row

    async def _db(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self._db_limiter)

    async def _db_revocation(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self._revocation_lane)

    # -- principals -------------------------------------------------------------------------

    async def register(
        self,
        *,
        public_key: bytes,
        role: str,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> PrincipalOut:
        """Register the key that signed this request (proof of possession) with ``role``."""
        if role not in wire.ROLES:
            raise ValueError(f"role must be one of {wire.ROLES}, got {role!r}")
        try:
            pid = principal_id(public_key)
        except ValueError:
            raise Denied("malformed") from None
        try:
            if signed_principal(headers) != pid:
                raise Denied("signature")
            signed = self._requests.check(
                public_key, method=method, path=path, body=body, headers=headers
            )
        except InvalidSignature:
            raise Denied("signature") from None
        await self._claim_request(signed)
        existing = await self._principal(pid)
        if existing is not None:
            if existing.role != role:
                raise Conflict(f"principal {pid} is already registered as {existing.role}")
            return PrincipalOut(principal_id=pid, role=role, created=False)
        try:
            await self._db(self.store.add_principal, pid, public_key, role, at=self.clock.time())
        except Conflict:  # registered concurrently: answer as for an existing principal
            raced = await self._db(self.store.get_principal, pid)
            if raced is None or raced.role != role:
                raise
            return PrincipalOut(principal_id=pid, role=role, created=False)
        _log.event("principal.registered", principal=pid, role=role)
        return PrincipalOut(principal_id=pid, role=role, created=True)

    # -- owner ------------------------------------------------------------------------------

    def _own(self, signer: PrincipalRow, owner_id: str, name: str) -> str:
        """The model id ``owner_id/name``, if ``signer`` is that owner; else the denial."""
        if signer.role != "owner":
            raise Denied("wrong_role")
        if signer.principal_id != owner_id:
            raise Denied("wrong_principal")
        return join_model_id(owner_id, name)

    async def put_model_key(
        self, signer: PrincipalRow, *, owner_id: str, name: str, version: int, wrapped: bytes
    ) -> ModelKeyReceipt:
        mid = self._own(signer, owner_id, name)
        info = wire.upload_info(
            "model-key",
            model_id=mid,
            principal_id=owner_id,
            version=version,
            keyservice_key=self.hpke_public_key,
        )
        secret = self._unwrap_upload(wrapped, info, what="model key")
        sealed = self.vault.seal("model-key", {"model_id": mid, "version": str(version)}, secret)
        epoch = await self._db(
            self.store.put_model_key, mid, owner_id, version, sealed, at=self.clock.time()
        )
        _log.event("model_key.stored", model_id=mid, version=version)
        return ModelKeyReceipt(model_id=mid, version=version, revocation_epoch=epoch)

    async def model_info(self, signer: PrincipalRow, *, owner_id: str, name: str) -> ModelInfo:
        mid = self._own(signer, owner_id, name)
        model = await self._db(self.store.get_model, mid)
        if model is None:
            raise NotFound(f"model {mid} has no key yet; put one first")
        users = await self._db(self.store.list_grants, mid)
        return ModelInfo(
            model_id=mid,
            owner_id=owner_id,
            key_version=model.current_version,
            grants=tuple(users),
        )

    async def grant(
        self,
        signer: PrincipalRow,
        *,
        owner_id: str,
        name: str,
        user_id: str,
        policy: Mapping[str, Any],
    ) -> AccessChange:
        mid = self._own(signer, owner_id, name)
        parsed = self._verifier.parse_policy(policy)
        if await self._db(self.store.get_model, mid) is None:
            raise NotFound(f"model {mid} has no key yet; put one before granting access")
        user = await self._principal(user_id)
        if user is None or user.role != "user":
            raise NotFound(f"no user {user_id} is registered")
        sealed = self.vault.seal(
            "grant",
            {"model_id": mid, "user_id": user_id},
            wire.canonical_json(self._verifier.policy_dict(parsed)),
        )
        epoch = await self._db(
            self.store.set_grant, mid, user_id, sealed, owner_id=owner_id, at=self.clock.time()
        )
        _log.event("grant.set", model_id=mid, user=user_id)
        return AccessChange(model_id=mid, user_id=user_id, revocation_epoch=epoch)

    async def revoke(
        self, signer: PrincipalRow, *, owner_id: str, name: str, user_id: str
    ) -> AccessChange:
        mid = self._own(signer, owner_id, name)
        epoch = await self._db_revocation(
            self.store.delete_grant, mid, user_id, owner_id=owner_id, at=self.clock.time()
        )
        _log.event("grant.revoked", model_id=mid, user=user_id, epoch=epoch)
        return AccessChange(model_id=mid, user_id=user_id, revocation_epoch=epoch)

    async def audit(self, signer: PrincipalRow, *, after: int, limit: int) -> AuditPage:
        """The chained audit entries after ``after`` (at most ``limit``) and a checkpoint of the
        head, signed by this KeyService once the head's MAC verified.  The entries that name
        ``signer`` (as actor or user, or its models) come whole; the others as digests."""
        if not after >= 0:
            raise ValueError(f"after must be >= 0, got {after}")
        if not 1 <= limit <= _AUDIT_PAGE:
            raise ValueError(f"limit must be within [1, {_AUDIT_PAGE}], got {limit}")
        seq, chain, rows = await self._db(self.store.audit_page, after=after, limit=limit)
        pid = signer.principal_id
        prefix = pid + "/"
        records = []
        for number, entry, digest in rows:
            mine = (
                entry.actor == pid
                or entry.user_id == pid
                or (entry.model_id or "").startswith(prefix)
            )
            records.append(
                AuditRecord(
                    seq=number,
                    digest=digest.hex(),
                    entry=audit_values(entry) if mine else {},
                )
            )
        at = self.clock.time()
        payload = protocol_audit.checkpoint_payload(
            keyservice_id=self.keyservice_id, seq=seq, chain=chain, at=at
        )
        checkpoint = AuditCheckpoint(
            keyservice_id=self.keyservice_id,
            seq=seq,
            chain=chain.hex(),
            at=at,
            signature=wire.b64encode(self._identity.sign(payload)),
        )
        return AuditPage(records=tuple(records), checkpoint=checkpoint)

    # -- user -------------------------------------------------------------------------------

    def _self_user(self, signer: PrincipalRow, owner_id: str, name: str, user_id: str) -> str:
        if signer.role != "user":
            raise Denied("wrong_role")
        if signer.principal_id != user_id:
            raise Denied("wrong_principal")
        return join_model_id(owner_id, name)

    async def put_request_key(
        self,
        signer: PrincipalRow,
        *,
        owner_id: str,
        name: str,
        user_id: str,
        wrapped: bytes,
        policy: Mapping[str, Any],
    ) -> RequestKeyReceipt:
        mid = self._self_user(signer, owner_id, name, user_id)
        parsed = self._verifier.parse_policy(policy)
        info = wire.upload_info(
            "request-key",
            model_id=mid,
            principal_id=user_id,
            version=None,
            keyservice_key=self.hpke_public_key,
        )
        secret = self._unwrap_upload(wrapped, info, what="request key")
        record = wire.canonical_json(
            {"key": wire.b64encode(secret), "policy": self._verifier.policy_dict(parsed)}
        )
        sealed = self.vault.seal("request-key", {"model_id": mid, "user_id": user_id}, record)
        version, epoch = await self._db(
            self.store.put_request_key, mid, user_id, sealed, at=self.clock.time()
        )
        _log.event("request_key.stored", model_id=mid, user=user_id, version=version)
        return RequestKeyReceipt(
            model_id=mid, user_id=user_id, version=version, revocation_epoch=epoch
        )

    async def delete_request_key(
        self, signer: PrincipalRow, *, owner_id: str, name: str, user_id: str
    ) -> AccessChange:
        mid = self._self_user(signer, owner_id, name, user_id)
        epoch = await self._db_revocation(
            self.store.delete_request_key, mid, user_id, at=self.clock.time()
        )
        _log.event("request_key.deleted", model_id=mid, user=user_id, epoch=epoch)
        return AccessChange(model_id=mid, user_id=user_id, revocation_epoch=epoch)

    def _unwrap_upload(self, wrapped: bytes, info: Mapping[str, str], *, what: str) -> bytes:
        try:
            secret = unwrap(self._hpke, wrapped, info=info)
        except InvalidEnvelope:
            raise ValueError(
                f"wrapped_key does not unwrap: wrap the {what} to this KeyService's attested "
                "public key, with the info of docs/keyservice.md"
            ) from None
        if len(secret) != 32:
            raise ValueError(f"the {what} must be 32 bytes, got {len(secret)}")
        return secret

    # -- runtime: challenge and release -----------------------------------------------------

    def challenge(self) -> Challenge:
        """A fresh challenge.  It costs one HMAC and stores nothing, so there is nothing to
        hoard, and no budget: a release is charged to its runtime once its evidence verified
        (:mod:`._limits`)."""
        issued = self.challenges.issue()
        self.metrics.challenges.inc()
        return issued

    async def release(self, body: bytes) -> ReleaseOut:
        """Answer a release request (the raw JSON body) or raise :class:`Denied`.

        A nonce that passes its tag and expiry check is used up by this request whatever the
        outcome: a denied release records it as used too, so the same nonce never gets a
        second decision (say, after a denial for the measurement, with other evidence).

        The release is charged to the runtime's own budget once its evidence verified (so no
        other requester can spend it), before any database read: :class:`Throttled` then, and
        the nonce stays unused.
        """
        request = self.releaser.parse(body)
        expires_at = self.challenges.check(request.nonce)
        if expires_at is None:
            raise Denied("nonce")
        denial: Denied | None = None
        response: ReleaseOut | None = None
        audit: list[AuditEntry] = []
        epoch = 0
        try:
            verified = self.releaser.verify_evidence(request)
            self.limit(Budget.RELEASE, request.runtime_key_id)
            if self._inline_reads:
                # SQLite in WAL mode: a few page reads that never wait for the writer; a thread
                # hop would cost more than the read (it waits for the GIL behind the event loop).
                epoch, records = self.store.release_records(request.pairs)
            else:
                epoch, records = await self._db(self.store.release_records, request.pairs)
            response, audit = self.releaser.decide(request, verified, epoch, records)
        except Denied as exc:
            denial = exc
        # Durable before the answer leaves: the nonce as used (false when another request, in
        # this process or another, used it first) and, for a granted release, its audit rows.
        claim = Claim(nonce=request.nonce, expires_at=expires_at, entries=tuple(audit))
        if not await self._claims.commit(claim):
            raise Denied("nonce")
        if denial is not None:
            raise denial
        assert response is not None  # decided, or denied above
        self.metrics.releases.inc()
        self.metrics.released_pairs.inc(len(audit))
        _log.event(
            "release.granted",
            level=logging.DEBUG,
            runtime_key=request.runtime_key_id,
            pairs=len(audit),
            epoch=epoch,
        )
        return response

    async def replicate(self, body: bytes) -> ReplicaOut:
        """Hand the master key to a joining replica (``POST /v1/replicas``, the raw JSON
        body; see :mod:`._replicas`) or raise :class:`Denied`.

        As a release's, the nonce is used up whatever the outcome, durably before the answer
        leaves, with the audit entry of a replica admitted; the request is charged to the
        replica key's budget once its evidence verified (:class:`Throttled` leaves the nonce
        unused).
        """
        request = self.replicas.parse(body)
        expires_at = self.challenges.check(request.nonce)
        if expires_at is None:
            raise Denied("nonce")
        denial: Denied | None = None
        response: ReplicaOut | None = None
        audit: tuple[AuditEntry, ...] = ()
        try:
            verified = self.replicas.verify(request)
            self.limit(Budget.RELEASE, request.replica_key_id)
            response, entry = self.replicas.decide(request, verified)
            audit = (entry,)
        except Denied as exc:
            denial = exc
        claim = Claim(nonce=request.nonce, expires_at=expires_at, entries=audit)
        if not await self._claims.commit(claim):
            raise Denied("nonce")
        if denial is not None:
            raise denial
        assert response is not None
        _log.event(
            "replica.admitted", replica_key=request.replica_key_id, measurement=response.measurement
        )
        return response

    async def epoch(self) -> int:
        return await self._db(self.store.epoch)

    # -- runtime: revocation polls ----------------------------------------------------------

    def session_key(self, runtime_key_id: str) -> bytes:
        """The session key of a runtime key, which every release to it carries (wrapped to
        it): derived, so any process of this KeyService knows it and stores nothing."""
        return hmac.new(self._session_root, runtime_key_id.encode("ascii"), "sha256").digest()

    async def revocations(self, body: bytes) -> RevocationPollOut:
        """Answer a revocation poll (the raw JSON body) or raise :class:`Denied`.

        The poll must be sealed under the session key of the runtime key it names, which only
        a runtime that obtained a release holds; then it is charged to that runtime's budget
        and answered, sealed under the same key, with the epoch and what changed since the
        epoch it asked about (:meth:`Store.changes_since`).
        """
        try:
            doc = RevocationPollIn.from_json(body)
            key_id = doc.runtime_key_id
            poll = doc.poll
        except (ValueError, TypeError, RecursionError):
            raise Denied("malformed") from None
        key = SymmetricKey.from_bytes(self.session_key(key_id))
        try:
            inner = json.loads(
                unseal(key, poll, context=wire.poll_context("poll", runtime_key_id=key_id))
            )
            since, nonce = inner["since"], inner["nonce"]
            if type(since) is not int or since < 0 or not isinstance(nonce, str):
                raise ValueError("poll")
        except (InvalidEnvelope, ValueError, KeyError, TypeError):
            raise Denied("malformed") from None
        self.limit(Budget.RUNTIME, key_id)
        if self._inline_reads:
            changes = self.store.changes_since(since)
        else:
            changes = await self._db(self.store.changes_since, since)
        answer = wire.canonical_json(
            {
                "nonce": nonce,
                "epoch": changes.epoch,
                "changes": [[c.epoch, c.model_id, c.user_id] for c in changes.changes],
                "complete": changes.complete,
            }
        )
        context = wire.poll_context("answer", runtime_key_id=key_id)
        sealed = seal(key, answer, context=context, clock=self.clock)
        self.metrics.revocation_polls.inc()
        return RevocationPollOut(answer=sealed)
