"""The runtime's side of key release, transport-free: build the request, open the response.

The runtime talks to the KeyService through its host's relay (the host is untrusted), so these
helpers take and return bytes and leave the sending to the caller::

    session = ReleaseSession(keyservice=attested)        # fresh HPKE key pair
    nonce = parse_challenge(relay.post("/v1/challenges", b""))
    evidence = local_evidence(session.report_data(nonce))
    body = session.request_body(nonce=nonce, evidence=evidence, pairs=[(user_id, model_id)])
    release = session.open(relay.post("/v1/releases", body), nonce=nonce)
    keys = release.keys[(user_id, model_id)]              # .model_key, .request_key

``attested`` comes from :func:`verify_keyservice`, which checks the KeyService's own evidence
against a pinned policy; the release response must be signed by that attested KeyService, so
the untrusted host cannot hand the runtime keys of its own making.  A runtime must honour
:attr:`Release.expires_at`, and use keys only while a revocation poll confirmed them within
:attr:`Release.revocation_check_s`::

    poll = RevocationPoll(session_key=release.session_key, runtime_key_id=..., since=epoch)
    answer = poll.open(*relay.post("/v1/revocations", poll.body()))
    # drop the keys of every pair in answer.changes (released before its epoch); all keys
    # older than answer.epoch if not answer.complete
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve.attest import Evidence, report_data_for
from sealserve.crypto import (
    HpkeKeyPair,
    RequestKey,
    SymmetricKey,
    seal,
    unseal,
    unwrap,
    verify_signature,
)
from sealserve.errors import AccessDenied, InvalidEnvelope, InvalidSignature, KeyServiceError
from sealserve.protocol import _wire as wire
from sealserve.protocol._attested import AttestedKeyService
from sealserve.protocol._ids import check_principal_id, split_model_id
from sealserve.protocol._messages import (
    ChallengeOut,
    ReleaseIn,
    ReleaseOut,
    ReleasePair,
    RevocationPollIn,
    RevocationPollOut,
)

__all__ = [
    "Release",
    "ReleaseSession",
    "ReleasedKeys",
    "RevocationAnswer",
    "RevocationPoll",
    "parse_challenge",
]


@dataclasses.dataclass(frozen=True, slots=True)
class ReleasedKeys:
    """The keys of one (user, model) pair, unwrapped inside the runtime."""

    user_id: str
    model_id: str
    model_key: SymmetricKey
    model_key_version: int
    request_key: RequestKey
    request_key_version: int

    def __repr__(self) -> str:
        return (
            f"ReleasedKeys(user_id={self.user_id[:12]!r}..., model_id={self.model_id!r}, "
            f"model_key_version={self.model_key_version}, "
            f"request_key_version={self.request_key_version})"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    """A verified release: the keys, the revocation epoch and when they expire."""

    keys: Mapping[tuple[str, str], ReleasedKeys]  # by (user_id, model_id)
    revocation_epoch: int
    issued_at: float
    expires_at: float
    measurement: str
    #: How long the keys may be used without a revocation poll confirming them.
    revocation_check_s: float
    #: The runtime's session key with the KeyService (revocation polls); ``repr`` hides it.
    session_key: SymmetricKey = dataclasses.field(repr=False)

    def expired(self, *, now: float) -> bool:
        return now >= self.expires_at


def parse_challenge(body: bytes) -> bytes:
    """The nonce of a ``POST /v1/challenges`` response."""
    try:
        return ChallengeOut.from_json(body).nonce
    except ValueError as exc:
        raise KeyServiceError("the challenge response is malformed") from exc


class ReleaseSession:
    """One runtime key pair and the releases made to it.

    The key pair is generated here and never leaves the runtime; keep one session for the
    lifetime of the runtime process (or rotate it: a new session is a new key).
    """

    def __init__(
        self,
        *,
        keyservice: AttestedKeyService,
        key_pair: HpkeKeyPair | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(keyservice, AttestedKeyService):
            raise TypeError(
                f"keyservice must be an AttestedKeyService, got {type(keyservice).__name__}"
            )
        self.keyservice = keyservice
        self._key_pair = key_pair or HpkeKeyPair.generate()
        self._clock = clock

    @property
    def public_key(self) -> bytes:
        return self._key_pair.public_key_bytes()

    def report_data(self, nonce: bytes) -> bytes:
        """The report_data the runtime's evidence must carry for this challenge ``nonce``."""
        return report_data_for(self.public_key, nonce)

    def request_body(
        self, *, nonce: bytes, evidence: Evidence, pairs: Iterable[tuple[str, str]]
    ) -> bytes:
        """The JSON body of ``POST /v1/releases`` for ``pairs`` of ``(user_id, model_id)``."""
        items = tuple(ReleasePair(user_id=u, model_id=m) for u, m in pairs)
        if not 1 <= len(items) <= wire.MAX_PAIRS:
            raise ValueError(f"pairs must hold 1 to {wire.MAX_PAIRS} pairs, got {len(items)}")
        for item in items:
            split_model_id(item.model_id)
            check_principal_id(item.user_id, name="user_id")
        return ReleaseIn(
            nonce=nonce,
            evidence=evidence.to_bytes(),
            runtime_public_key=self.public_key,
            pairs=items,
        ).to_json()

    def open(self, body: bytes, *, nonce: bytes, status: int = 200) -> Release:
        """Verify and unwrap a ``POST /v1/releases`` response.

        :class:`~sealserve.errors.AccessDenied` for the fixed denial;
        :class:`~sealserve.errors.KeyServiceError` for a response that is not a release signed
        by the attested KeyService for this key pair and nonce.
        """
        if status == 403:
            raise AccessDenied()
        if status != 200:
            raise KeyServiceError(f"the KeyService answered the release with HTTP {status}")
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            signature = wire.b64decode(doc["signature"], name="signature")
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyServiceError("the release response is malformed") from exc
        try:
            verify_signature(
                self.keyservice.signing_public_key, wire.release_signing_payload(doc), signature
            )
        except InvalidSignature:
            raise KeyServiceError(
                "the release response is not signed by the attested KeyService"
            ) from None
        return self._unwrap(doc, nonce)

    def _unwrap(self, raw: Mapping[str, Any], nonce: bytes) -> Release:
        try:
            doc = ReleaseOut.from_dict(raw)
            if doc.keyservice_id != self.keyservice.keyservice_id:
                raise ValueError("keyservice_id")
            if doc.runtime_key_id != wire.fingerprint(self.public_key):
                raise ValueError("runtime_key_id")
            if doc.nonce != nonce:
                raise ValueError("nonce")
            keys: dict[tuple[str, str], ReleasedKeys] = {}
            session: bytes | None = None
            for item in doc.keys:
                uid, mid = item.user_id, item.model_id
                both = unwrap(
                    self._key_pair,
                    item.wrapped_keys,
                    info=wire.release_info(
                        model_id=mid,
                        user_id=uid,
                        model_key_version=item.model_key_version,
                        request_key_version=item.request_key_version,
                        runtime_key=self.public_key,
                    ),
                )
                if len(both) != wire.RELEASED_SECRET_BYTES:
                    raise ValueError("wrapped_keys")
                model_key, request_key = both[:32], both[32:64]
                if session is not None and both[64:] != session:
                    raise ValueError("session key")
                session = both[64:]
                keys[(uid, mid)] = ReleasedKeys(
                    user_id=uid,
                    model_id=mid,
                    model_key=SymmetricKey.from_bytes(model_key),
                    model_key_version=item.model_key_version,
                    request_key=RequestKey.from_bytes(request_key),
                    request_key_version=item.request_key_version,
                )
            if session is None or not doc.revocation_check_s > 0:
                raise ValueError("keys")
            return Release(
                keys=keys,
                revocation_epoch=doc.revocation_epoch,
                issued_at=doc.issued_at,
                expires_at=doc.expires_at,
                measurement=doc.measurement,
                revocation_check_s=doc.revocation_check_s,
                session_key=SymmetricKey.from_bytes(session),
            )
        except (ValueError, KeyError, TypeError, InvalidEnvelope) as exc:
            raise KeyServiceError(
                "the release response does not match this runtime's key and nonce"
            ) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationAnswer:
    """What changed since the epoch a poll asked about, as the KeyService said it.

    ``changes`` are ``(epoch, model_id, user_id)`` (``user_id`` ``None``: every user of the
    model); a key of a pair obtained under an older epoch than a change of it must go.  When
    ``complete`` is false the list is not whole: drop every key older than ``epoch``.
    """

    epoch: int
    changes: tuple[tuple[int, str, str | None], ...]
    complete: bool


class RevocationPoll:
    """One revocation poll (``POST /v1/revocations``), sealed under the runtime's session key
    with a fresh nonce, so the untrusted host can neither read the answer nor replay an old
    one."""

    def __init__(
        self,
        *,
        session_key: SymmetricKey,
        runtime_key_id: str,
        since: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(session_key, SymmetricKey):
            raise TypeError(f"session_key must be a SymmetricKey, got {type(session_key)!r}")
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError(f"since must be an int >= 0, got {since!r}")
        self._key = session_key
        self._key_id = check_principal_id(runtime_key_id, name="runtime_key_id")
        self.since = since
        self._nonce = wire.b64encode(os.urandom(16))
        self._clock = clock

    def body(self) -> bytes:
        """The JSON body to send."""
        inner = wire.canonical_json({"since": self.since, "nonce": self._nonce})
        context = wire.poll_context("poll", runtime_key_id=self._key_id)
        sealed = seal(self._key, inner, context=context, clock=self._clock)
        return RevocationPollIn(runtime_key_id=self._key_id, poll=sealed).to_json()

    def open(self, status: int, body: bytes) -> RevocationAnswer:
        """The answer to this poll; :class:`~sealserve.errors.AccessDenied` for the fixed 403,
        :class:`~sealserve.errors.KeyServiceError` for anything else that is not this poll's
        answer sealed under the session key (``retryable`` for 429 and 5xx)."""
        if status == 403:
            raise AccessDenied()
        if status != 200:
            error = KeyServiceError(f"the KeyService answered the revocation poll with {status}")
            error.retryable = status in (429, 502, 503, 504)
            raise error
        try:
            sealed = RevocationPollOut.from_json(body).answer
            context = wire.poll_context("answer", runtime_key_id=self._key_id)
            doc = json.loads(unseal(self._key, sealed, context=context))
            if not isinstance(doc, dict) or doc.get("nonce") != self._nonce:
                raise ValueError("nonce")
            epoch, complete = doc["epoch"], doc["complete"]
            if type(epoch) is not int or epoch < self.since or type(complete) is not bool:
                raise ValueError("epoch")
            changes = []
            for item in doc["changes"]:
                at, model_id, user_id = item
                if type(at) is not int or not self.since < at <= epoch:
                    raise ValueError("change")
                split_model_id(model_id)
                if user_id is not None:
                    check_principal_id(user_id, name="user_id")
                changes.append((at, model_id, user_id))
        except (ValueError, KeyError, TypeError, InvalidEnvelope) as exc:
            raise KeyServiceError("the revocation answer is not this poll's") from exc
        return RevocationAnswer(epoch=epoch, changes=tuple(changes), complete=complete)
