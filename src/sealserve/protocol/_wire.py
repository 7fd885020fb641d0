"""The KeyService's wire format: names, encodings and the HPKE ``info`` strings.

Shared by the service, the owner and user clients and the runtime-side release helper, so
that both ends build the same bytes.  Binary values travel as unpadded base64url.  Every key
that crosses the wire is HPKE-wrapped, and the ``info`` of the wrapping binds what the key is,
which model and principal it belongs to, its version, and the public key it is wrapped to, so
a wrapped key cannot be replayed as another key, for another principal or to another holder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from sealserve.crypto import SIGNATURE_HEADERS, canonical_encode
from sealserve.protocol._codec import b64decode, b64encode, canonical_json

__all__ = [
    "API_PREFIX",
    "DENIAL_BODY",
    "MAX_PAIRS",
    "RELEASED_SECRET_BYTES",
    "RESPONSE_SIGNATURE_HEADER",
    "ROLES",
    "b64decode",
    "b64encode",
    "canonical_json",
    "fingerprint",
    "keyservice_binding",
    "poll_context",
    "release_info",
    "release_signing_payload",
    "request_tag",
    "response_signing_payload",
    "upload_info",
]

API_PREFIX = "/v1"
#: The header that carries the KeyService's signature of a response to a signed request.
RESPONSE_SIGNATURE_HEADER = "Sealserve-Response-Signature"
#: The one body of every refused key release or signed request (HTTP 403).
DENIAL_BODY: dict[str, str] = {"error": "access denied"}
ROLES = ("owner", "user")
#: Most (user, model) pairs one release may ask for.
MAX_PAIRS = 32
#: What one pair's ``wrapped_keys`` holds: model key || request key || the runtime's session
#: key (32 bytes each; the session key is the same in every pair of a runtime's releases).
RELEASED_SECRET_BYTES = 96


def fingerprint(public_key: bytes) -> str:
    """Hex SHA-256 of a public key: how ids, info strings and the audit log name it."""
    return hashlib.sha256(public_key).hexdigest()


def keyservice_binding(hpke_public_key: bytes, signing_public_key: bytes) -> bytes:
    """What the KeyService's evidence binds (as the "public key" of its report_data): both
    its HPKE key (that clients wrap keys to) and its Ed25519 key (that signs responses)."""
    return canonical_encode(
        {
            "purpose": "sealserve/keyservice/binding",
            "hpke": bytes(hpke_public_key),
            "signing": bytes(signing_public_key),
        }
    )


def replica_binding(replica_public_key: bytes) -> bytes:
    """What a joining KeyService's evidence binds (the "public key" of its report_data): its
    fresh HPKE key, under a purpose of its own, so evidence made to join a KeyService never
    passes for a runtime's release request, nor the reverse."""
    return canonical_encode(
        {"purpose": "sealserve/keyservice/replica", "key": bytes(replica_public_key)}
    )


def replica_info(*, keyservice_id: str, replica_key: bytes, nonce: bytes) -> dict[str, str]:
    """HPKE info of the master key a running KeyService hands to a joining replica: binds the
    giver, the replica's fresh key and the giver's challenge nonce."""
    return {
        "purpose": "sealserve/keyservice/master-key",
        "keyservice_id": keyservice_id,
        "replica_key": fingerprint(replica_key),
        "nonce": b64encode(nonce),
    }


def replica_signing_payload(body: Mapping[str, Any]) -> bytes:
    """What the KeyService signs in a replica answer: every field but ``signature``."""
    return canonical_encode(
        {
            "purpose": "sealserve/keyservice/replica",
            "body": canonical_json({k: v for k, v in body.items() if k != "signature"}),
        }
    )


def upload_info(
    kind: str, *, model_id: str, principal_id: str, version: int | None, keyservice_key: bytes
) -> dict[str, str]:
    """HPKE info of a key uploaded to the KeyService: ``kind`` is ``model-key`` (from the
    owner ``principal_id``, with its version) or ``request-key`` (from the user; the service
    numbers its versions, so ``version`` is ``None``)."""
    if kind not in ("model-key", "request-key"):
        raise ValueError(f"kind must be 'model-key' or 'request-key', got {kind!r}")
    return {
        "purpose": f"sealserve/upload/{kind}",
        "model_id": model_id,
        "principal_id": principal_id,
        "version": "" if version is None else str(version),
        "keyservice_key": fingerprint(keyservice_key),
    }


def release_info(
    *,
    model_id: str,
    user_id: str,
    model_key_version: int,
    request_key_version: int,
    runtime_key: bytes,
) -> dict[str, str]:
    """HPKE info of the keys of one (user, model) pair released to a runtime (one wrap of
    model key || request key): binds the model, the user, both key versions and the runtime's
    public key."""
    return {
        "purpose": "sealserve/release/keys",
        "model_id": model_id,
        "user_id": user_id,
        "model_key_version": str(model_key_version),
        "request_key_version": str(request_key_version),
        "runtime_key": fingerprint(runtime_key),
    }


def response_signing_payload(
    *, method: str, path: str, request_tag: str, status: int, body: bytes
) -> bytes:
    """What the KeyService signs for a response to a signed request: the request it answers
    (method, path and a tag of the request's signature headers), the status and the body."""
    return canonical_encode(
        {
            "purpose": "sealserve/keyservice/response",
            "method": method.upper(),
            "path": path,
            "request": request_tag,
            "status": status,
            "body": hashlib.sha256(body).digest(),
        }
    )


def release_signing_payload(body: Mapping[str, Any]) -> bytes:
    """What the KeyService signs in a release response: every field but ``signature``."""
    return canonical_encode(
        {
            "purpose": "sealserve/keyservice/release",
            "body": canonical_json({k: v for k, v in body.items() if k != "signature"}),
        }
    )


def request_tag(headers: Mapping[str, str]) -> str:
    """A digest of a signed request's signature headers (``SIGNATURE_HEADERS`` of the crypto
    layer), which name the request uniquely: they hold its nonce and its signature."""
    items = sorted((k.lower(), v) for k, v in headers.items() if k.lower() in SIGNATURE_HEADERS)
    return hashlib.sha256(canonical_json(items)).hexdigest()


def poll_context(direction: str, *, runtime_key_id: str) -> dict[str, str]:
    """The envelope context of a revocation poll (``"poll"``) or of its answer
    (``"answer"``), sealed under the runtime's session key."""
    if direction not in ("poll", "answer"):
        raise ValueError(f"direction must be 'poll' or 'answer', got {direction!r}")
    return {"purpose": f"sealserve/revocations/{direction}", "runtime_key_id": runtime_key_id}
