"""The model upload API: an owner streams a sealed model to the store, in signed chunks.

Every request is a signed request (:func:`sealserve.crypto.sign_request`: principal,
timestamp, nonce, Ed25519 signature over method, path with its query, body digest, timestamp
and nonce) that also carries the signer's public key (:data:`PUBLIC_KEY_HEADER`).  The ids
are self-certifying: a principal id is the SHA-256 of its public key, and a model id is
``<owner_id>/<name>``, so the server needs no directory of keys to check that the signer
*is* the model's owner, and nobody else may create, replace or delete it::

    POST   /v1/uploads                        UploadIn  -> UploadOut   (a new or resumed upload)
    GET    /v1/uploads/{upload_id}                      -> UploadOut   (where it is)
    PUT    /v1/uploads/{upload_id}?offset=N   bytes     -> UploadOut   (one chunk, at N)
    POST   /v1/uploads/{upload_id}:commit               -> StoredModel (digest checked, stored)
    DELETE /v1/uploads/{upload_id}                      -> UploadOut   (abandoned)
    GET    /v1/models/{owner_id}/{name}                 -> StoredModel (unsigned: public)
    DELETE /v1/models/{owner_id}/{name}?digest=sha256:H -> ModelDeleted

The upload declares the sealed model's size and SHA-256 up front (both signed); chunks land
at the offset the server holds, each whole or not at all, so a broken connection loses at
most the chunk in flight and the upload resumes at :attr:`UploadOut.offset`.  A delete names
the digest it deletes, so a replayed delete can never remove a model uploaded since.

:class:`OwnerRequests` is the server's side: it checks a request's head before its body is
read (:meth:`OwnerRequests.precheck`), then its signature, once (:meth:`OwnerRequests.verify`;
a replay is refused).  Every failure is the same :class:`~sealserve.errors.AccessDenied`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Annotated, Final, NoReturn

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.crypto import (
    PRINCIPAL_HEADER,
    TIMESTAMP_HEADER,
    Identity,
    RequestVerifier,
    principal_id,
    sign_request,
)
from sealserve.errors import AccessDenied, InvalidSignature
from sealserve.protocol._ids import MODEL_NAME_PATTERN, PRINCIPAL_ID_PATTERN, split_model_id
from sealserve.protocol._schema import Message, Rule
from sealserve.protocol._wire import API_PREFIX, b64decode, b64encode

__all__ = [
    "DIGEST_PATTERN",
    "ModelDeleted",
    "OwnerRequests",
    "PUBLIC_KEY_HEADER",
    "StoredModel",
    "UPLOADS_PATH",
    "UploadIn",
    "UploadOut",
    "chunk_path",
    "commit_path",
    "model_path",
    "owner_headers",
    "upload_path",
]

_log = get_logger(__name__)

#: Where uploads are created.
UPLOADS_PATH: Final = API_PREFIX + "/uploads"
#: The signer's raw Ed25519 public key, base64url (its SHA-256 is the principal id).
PUBLIC_KEY_HEADER: Final = "x-sealserve-public-key"
#: A sealed model's digest as the API writes it.
DIGEST_PATTERN: Final = r"^sha256:[0-9a-f]{64}$"
_UPLOAD_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{22,64}$"

_ModelId = Annotated[
    str, Rule(pattern=PRINCIPAL_ID_PATTERN[:-1] + "/" + MODEL_NAME_PATTERN[1:], max_length=193)
]
_Digest = Annotated[str, Rule(pattern=DIGEST_PATTERN, description="sha256:<64 hex digits>")]
_Size = Annotated[int, Rule(ge=1, le=2**53)]
_Version = Annotated[int, Rule(ge=1, le=2**31 - 1)]
_UploadId = Annotated[str, Rule(pattern=_UPLOAD_ID_PATTERN)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UploadIn(Message):
    """A new upload, or with ``upload_id`` (else empty) the resumption of one, which must then
    declare the same model, size, digest and key version."""

    extra_fields = False

    model_id: _ModelId
    size: _Size
    digest: _Digest
    key_version: _Version
    upload_id: Annotated[str, Rule(pattern=r"^([A-Za-z0-9_-]{22,64})?$")] = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UploadOut(Message):
    """An upload in progress: the next chunk goes at ``offset``, at most ``chunk_bytes``."""

    upload_id: _UploadId
    model_id: _ModelId
    size: _Size
    digest: _Digest
    key_version: _Version
    offset: Annotated[int, Rule(ge=0)]
    chunk_bytes: Annotated[int, Rule(ge=1)]
    expires_at: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoredModel(Message):
    """A model in the store (nothing secret)."""

    model_id: _ModelId
    owner_id: Annotated[str, Rule(pattern=PRINCIPAL_ID_PATTERN)]
    name: Annotated[str, Rule(pattern=MODEL_NAME_PATTERN)]
    size: _Size
    key_version: _Version
    digest: _Digest
    stored_at: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelDeleted(Message):
    """What a delete removed."""

    model_id: _ModelId
    digest: _Digest
    deleted: bool


def upload_path(upload_id: str) -> str:
    return f"{UPLOADS_PATH}/{upload_id}"


def chunk_path(upload_id: str, offset: int) -> str:
    """The target of the chunk that starts at ``offset`` (signed with its query)."""
    return f"{UPLOADS_PATH}/{upload_id}?offset={int(offset)}"


def commit_path(upload_id: str) -> str:
    return f"{UPLOADS_PATH}/{upload_id}:commit"


def model_path(model_id: str) -> str:
    owner, name = split_model_id(model_id)
    return f"{API_PREFIX}/models/{owner}/{name}"


def owner_headers(
    identity: Identity,
    *,
    method: str,
    path: str,
    body: bytes | bytearray | memoryview = b"",
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, str]:
    """The headers that sign a request of this API as ``identity`` (with its public key)."""
    headers = sign_request(identity, method=method, path=path, body=body, clock=clock)
    headers[PUBLIC_KEY_HEADER] = b64encode(identity.public_key_bytes)
    return headers


class OwnerRequests:
    """The server's check of this API's signed requests (see the module docstring).

    ``replay_window_s`` bounds the clock skew accepted, and how long a request's nonce is
    remembered (a replay inside it is refused; outside it, its timestamp is).  Thread-safe.
    """

    def __init__(
        self,
        *,
        replay_window_s: float = 300.0,
        clock: Clock = SYSTEM_CLOCK,
        max_per_principal: int = 10_000,
    ) -> None:
        self._verifier = RequestVerifier(
            replay_window_s=replay_window_s, clock=clock, max_per_principal=max_per_principal
        )
        self._window = float(replay_window_s)
        self._clock = clock

    def precheck(self, headers: Mapping[str, str]) -> str:
        """The principal a request's head claims, once its public key hashes to that
        principal and its timestamp is inside the window (nothing is remembered; the body is
        not needed).  :class:`~sealserve.errors.AccessDenied` otherwise."""
        public_key = self._public_key(headers)
        pid = principal_id(public_key)
        if _get(headers, PRINCIPAL_HEADER) != pid:
            _deny("principal_mismatch")
        raw = _get(headers, TIMESTAMP_HEADER)
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
            _deny("timestamp_format")
        if abs(self._clock.time() - int(raw)) > self._window:
            _deny("timestamp")
        return pid

    def verify(
        self,
        *,
        method: str,
        path: str,
        body: bytes | bytearray | memoryview,
        headers: Mapping[str, str],
    ) -> str:
        """The verified principal of a signed request, accepted once (a replay, a bad or
        missing signature, a key that is not the principal's: the fixed
        :class:`~sealserve.errors.AccessDenied`; a principal with too many requests in the
        window: :class:`~sealserve.errors.ReplayQuotaExceeded`)."""
        public_key = self._public_key(headers)
        try:
            signed = self._verifier.verify(
                public_key, method=method, path=path, body=body, headers=headers
            )
        except InvalidSignature:
            raise AccessDenied() from None
        return signed.principal_id

    def _public_key(self, headers: Mapping[str, str]) -> bytes:
        try:
            raw = b64decode(_get(headers, PUBLIC_KEY_HEADER), name=PUBLIC_KEY_HEADER)
        except ValueError:
            _deny("public_key_encoding")
        if len(raw) != 32:
            _deny("public_key_length")
        return raw


def _get(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for key, item in headers.items():
            if key.lower() == name:
                return item
        return ""
    return value


def _deny(reason: str) -> NoReturn:
    _log.event("upload.signature_rejected", level=logging.DEBUG, reason=reason)
    raise AccessDenied()
