"""Attested master-key transfer: how a KeyService on another node becomes the same KeyService.

A KeyService's master key is sealed to the node that created it (its TEE sealing key).  A
replica on another node, or on a node that has no sealing key at all (TDX), obtains it from a
running KeyService of the *same measurement*, and neither side takes the other's host at its
word: both attest.

::

    joining J (fresh HPKE key k)                       running P (master key m)
    GET  /v1/attestation?nonce=n1      ------------->  evidence(binding(P's keys), n1)
      verify: P's measurement is J's own (and its platform a pinned replica platform)
    POST /v1/challenges                ------------->  nonce n2 (stateless, single use)
    POST /v1/replicas {n2, evidence(replica_binding(k), n2), k}
                                        ------------->  verify: J's measurement is P's own,
                                                        debug refused, TCB, pinned platform;
                                                        n2 used up (durable)
                                        <-------------  HPKE(k, m; info: P, k, n2), signed by P
      verify P's signature (its attested key), unwrap, and check that m derives exactly
      the keys P attested with (so m is P's master key, not one the host made up)

The policy each side applies is ``Policy(measurements={its own measurement})`` with the
replica reference values of its measured launch config (:func:`replica_policy`): code that
measures differently (another build, another KeyService setting, another DCAP root) never
receives the master key, and never hands one over.  A KeyService in a confidential VM admits
replicas only on the VM images its measured config pins, since the image is part of what is
trusted there; with none pinned it neither gives nor takes a master key.  Every refusal is the
one fixed denial; the reason goes to the log at DEBUG.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from typing import Any, Final

import httpx

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve._tls import client_context
from sealserve.attest import (
    FORMAT_LAUNCH,
    Evidence,
    Policy,
    ReferenceValues,
    TrustAnchors,
    report_data_for,
)
from sealserve.crypto import (
    HpkeKeyPair,
    HpkeSuite,
    Identity,
    SymmetricKey,
    unwrap,
    verify_signature,
)
from sealserve.errors import (
    AttestationError,
    InvalidEnvelope,
    InvalidSignature,
    KeyServiceError,
    SealedStateError,
)
from sealserve.keyservice._judge import EvidenceJudge, VerifiedEvidence
from sealserve.keyservice._records import AuditEntry
from sealserve.keyservice._releaser import Denied
from sealserve.keyservice._vault import Vault
from sealserve.protocol import ChallengeOut, ReplicaIn, ReplicaOut, verify_keyservice, wire

__all__ = [
    "REPLICAS_PATH",
    "ReplicaGiver",
    "join_keyservice",
    "replica_policy",
]

REPLICAS_PATH: Final = wire.API_PREFIX + "/replicas"
_MAX_EVIDENCE_BYTES: Final = 32 * 1024
_SUITES_BY_KEY_SIZE: Final = {suite.public_key_size: suite for suite in HpkeSuite}
_TIMEOUT_S: Final = 30.0
_log = get_logger(__name__)


def replica_policy(
    own: Evidence, reference_values: tuple[ReferenceValues, ...] = ()
) -> Policy | None:
    """What a replica of the KeyService whose own evidence is ``own`` must attest: its own
    measurement (and debug only if it is a debug launch itself), on one of the pinned
    ``reference_values`` platforms.  None (no replicas at all) for a KeyService in a
    confidential VM without pinned replica platforms."""
    confidential_vm = own.format == FORMAT_LAUNCH
    if confidential_vm and not reference_values:
        return None
    return Policy(
        measurements=frozenset({own.measurement.hex()}),
        allow_debug=own.debug,
        reference_values=tuple(reference_values),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaRequest:
    nonce: bytes
    evidence: bytes
    replica_key: bytes
    suite: HpkeSuite

    @property
    def replica_key_id(self) -> str:
        return wire.fingerprint(self.replica_key)


class ReplicaGiver:
    """The running side: decides a ``POST /v1/replicas`` (pure apart from the evidence check)."""

    def __init__(
        self,
        *,
        vault: Vault,
        verifier: EvidenceJudge,
        identity: Identity,
        keyservice_id: str,
        policy: Policy | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._vault = vault
        self._verifier = verifier
        self._identity = identity
        self._keyservice_id = keyservice_id
        self._policy = policy
        self._clock = clock

    def parse(self, body: bytes) -> ReplicaRequest:
        try:
            doc = ReplicaIn.from_json(body)
            nonce, evidence, key = doc.nonce, doc.evidence, doc.replica_public_key
            if len(evidence) > _MAX_EVIDENCE_BYTES:
                raise ValueError("evidence size")
            suite = _SUITES_BY_KEY_SIZE[len(key)]
        except (ValueError, TypeError, KeyError, RecursionError):
            raise Denied("malformed") from None
        return ReplicaRequest(nonce, evidence, key, suite)

    def verify(self, request: ReplicaRequest) -> VerifiedEvidence:
        """The joiner's evidence, verified and bound to its key and the nonce; else denied."""
        if self._policy is None:
            raise Denied("replicas_not_admitted")
        verified = self._verifier.verify(
            request.evidence,
            bound_key=wire.replica_binding(request.replica_key),
            nonce=request.nonce,
        )
        if verified is None:
            raise Denied("evidence")
        return verified

    def decide(
        self, request: ReplicaRequest, verified: VerifiedEvidence
    ) -> tuple[ReplicaOut, AuditEntry]:
        """The signed answer with the wrapped master key, or the denial."""
        if self._policy is None or not self._verifier.accepts(verified, self._policy):
            raise Denied("replica_policy", measurement=verified.measurement)
        info = wire.replica_info(
            keyservice_id=self._keyservice_id, replica_key=request.replica_key, nonce=request.nonce
        )
        try:
            wrapped = self._vault.wrap_master_key(
                request.replica_key, info=info, suite=request.suite
            )
        except ValueError:
            raise Denied("malformed") from None
        now = self._clock.time()
        unsigned = ReplicaOut(
            keyservice_id=self._keyservice_id,
            replica_key_id=request.replica_key_id,
            nonce=wire.b64encode(request.nonce),
            measurement=verified.measurement,
            issued_at=now,
            wrapped_master_key=wire.b64encode(wrapped),
            signature="",
        )
        payload = wire.replica_signing_payload(unsigned.to_dict())
        signed = dataclasses.replace(
            unsigned, signature=wire.b64encode(self._identity.sign(payload))
        )
        audit = AuditEntry(
            at=now, event="replica", actor=request.replica_key_id, measurement=verified.measurement
        )
        return signed, audit


# -- the joining side ---------------------------------------------------------------------------


def join_keyservice(
    url: str,
    *,
    policy: Policy | None,
    trust: TrustAnchors,
    evidence_source: Any,
    clock: Clock = SYSTEM_CLOCK,
    transport: httpx.BaseTransport | None = None,
    ca_bundle: str | None = None,
) -> bytes:
    """The master key of the running KeyService at ``url``, obtained by attested transfer
    (see the module docstring).  ``evidence_source(report_data) -> Evidence bytes`` is this
    process's own (``local_evidence``); ``policy`` is :func:`replica_policy` of it.

    :class:`~sealserve.errors.SealedStateError` when the peer is not a KeyService of this
    measurement, refuses, or answers anything that does not check out.  Over HTTPS the
    peer's certificate is checked against ``ca_bundle`` (or the system's CAs); TLS adds
    privacy of metadata only, the transfer's security is the attestation.
    """
    if policy is None:
        raise SealedStateError(
            "this KeyService runs in a confidential VM and pins no replica VM images "
            "(keyservice.replica_reference_values): it cannot verify the platform of a peer "
            "to join. Pin the images its replicas run on."
        )
    base = url.rstrip("/")
    try:
        verify = client_context(ca_bundle) if base.startswith("https:") else True
        with httpx.Client(
            base_url=base, timeout=_TIMEOUT_S, transport=transport, verify=verify
        ) as http:
            return _join(
                http, policy=policy, trust=trust, evidence_source=evidence_source, clock=clock
            )
    except httpx.HTTPError as exc:
        raise SealedStateError(f"could not reach the KeyService to join at {base}: {exc}") from exc


def _join(
    http: httpx.Client,
    *,
    policy: Policy,
    trust: TrustAnchors,
    evidence_source: Any,
    clock: Clock,
) -> bytes:
    # 1. The peer attests with this KeyService's own measurement (on a pinned platform).
    nonce = secrets.token_bytes(32)
    answer = http.get(wire.API_PREFIX + "/attestation", params={"nonce": wire.b64encode(nonce)})
    if answer.status_code != 200:
        raise _refused(f"attestation answered {answer.status_code}")
    try:
        peer = verify_keyservice(
            answer.content, nonce=nonce, policy=policy, trust=trust, now=clock.time()
        )
    except (AttestationError, KeyServiceError):
        raise _refused("the peer is not a KeyService of this measurement") from None
    # 2. This KeyService attests to the peer, over the peer's challenge and a fresh key.
    challenge = http.post(wire.API_PREFIX + "/challenges")
    if challenge.status_code != 201:
        raise _refused(f"challenges answered {challenge.status_code}")
    try:
        challenge_nonce = ChallengeOut.from_json(challenge.content).nonce
    except (ValueError, TypeError, KeyError):
        raise _refused("a malformed challenge") from None
    key_pair = HpkeKeyPair.generate(suite=peer.hpke_suite)
    public = key_pair.public_key_bytes()
    report_data = report_data_for(wire.replica_binding(public), challenge_nonce)
    evidence = bytes(evidence_source(report_data))
    body = ReplicaIn(
        nonce=challenge_nonce,
        evidence=evidence,
        replica_public_key=public,
    )
    reply = http.post(
        REPLICAS_PATH, content=body.to_json(), headers={"content-type": "application/json"}
    )
    if reply.status_code != 200:
        raise _refused(f"the peer refused this replica ({reply.status_code})")
    # 3. The answer is the attested peer's, for this key and this nonce; the key inside
    #    derives exactly the keys the peer attested with.
    try:
        doc = ReplicaOut.from_json(reply.content)
        verify_signature(
            peer.signing_public_key,
            wire.replica_signing_payload(doc.to_dict()),
            wire.b64decode(doc.signature, name="signature"),
        )
        if (
            doc.keyservice_id != peer.keyservice_id
            or doc.replica_key_id != wire.fingerprint(public)
            or wire.b64decode(doc.nonce, name="nonce") != challenge_nonce
        ):
            raise ValueError("the answer is for another request")
        info = wire.replica_info(
            keyservice_id=peer.keyservice_id, replica_key=public, nonce=challenge_nonce
        )
        master = unwrap(key_pair, wire.b64decode(doc.wrapped_master_key), info=info)
    except (InvalidSignature, InvalidEnvelope, ValueError, TypeError, KeyError):
        raise _refused("the peer's answer does not check out") from None
    hpke, identity = Vault(SymmetricKey.from_bytes(master)).instance_keys()
    if (
        hpke.public_key_bytes() != peer.hpke_public_key
        or identity.public_key_bytes != peer.signing_public_key
    ):
        raise _refused("the handed-over key is not the peer's master key")
    _log.event("replica.joined", keyservice_id=peer.keyservice_id, measurement=peer.measurement)
    return master


def _refused(reason: str) -> SealedStateError:
    _log.event("replica.join_refused", level=logging.DEBUG, reason=reason)
    return SealedStateError(f"joining the running KeyService failed: {reason}")
