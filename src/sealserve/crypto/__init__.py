"""Cryptographic recipes: envelopes, sealed models, key wrapping, identities, signed requests.

Everyday calls make no dangerous choice: callers never pick a nonce, an algorithm or a key
length.  Every failed unseal or unwrap is the same :class:`~sealserve.errors.InvalidEnvelope`;
every failed signature check the same :class:`~sealserve.errors.InvalidSignature`.

>>> from sealserve.crypto import SymmetricKey, seal, unseal
>>> key = SymmetricKey.generate()
>>> ctx = {"purpose": "demo", "request_id": "r-1"}
>>> unseal(key, seal(key, b"secret", context=ctx), context=ctx)
b'secret'
"""

from sealserve.crypto._canonical import CanonicalValue, canonical_decode, canonical_encode
from sealserve.crypto._envelope import (
    ENVELOPE_OVERHEAD,
    MAX_PLAINTEXT_BYTES,
    seal,
    seal_into,
    sealed_size,
    unseal,
    unseal_into,
    unsealed_size,
)
from sealserve.crypto._hpke import (
    MAX_WRAPPED_SECRET_BYTES,
    HpkeKeyPair,
    HpkeSuite,
    unwrap,
    wrap,
)
from sealserve.crypto._identity import Identity, principal_id, verify_signature
from sealserve.crypto._keys import KEY_BYTES, RequestKey, SymmetricKey
from sealserve.crypto._signing import (
    NONCE_HEADER,
    PRINCIPAL_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_HEADERS,
    TIMESTAMP_HEADER,
    RequestVerifier,
    SignedRequest,
    sign_request,
    signed_principal,
)
from sealserve.crypto._stream import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_MODEL_BYTES,
    MAX_MODEL_VERSION,
    MIN_CHUNK_SIZE,
    SEALED_MODEL_HEADER_SIZE,
    SealedModelHeader,
    seal_model,
    sealed_model_size,
    unseal_model,
    unseal_model_stream,
)

__all__ = [
    "CanonicalValue",
    "DEFAULT_CHUNK_SIZE",
    "ENVELOPE_OVERHEAD",
    "HpkeKeyPair",
    "HpkeSuite",
    "Identity",
    "KEY_BYTES",
    "MAX_CHUNK_SIZE",
    "MAX_MODEL_BYTES",
    "MAX_MODEL_VERSION",
    "MAX_PLAINTEXT_BYTES",
    "MAX_WRAPPED_SECRET_BYTES",
    "MIN_CHUNK_SIZE",
    "NONCE_HEADER",
    "PRINCIPAL_HEADER",
    "RequestKey",
    "RequestVerifier",
    "SEALED_MODEL_HEADER_SIZE",
    "SIGNATURE_HEADER",
    "SIGNATURE_HEADERS",
    "SealedModelHeader",
    "SignedRequest",
    "SymmetricKey",
    "TIMESTAMP_HEADER",
    "canonical_decode",
    "canonical_encode",
    "principal_id",
    "seal",
    "seal_into",
    "seal_model",
    "sealed_model_size",
    "sealed_size",
    "sign_request",
    "signed_principal",
    "unseal",
    "unseal_into",
    "unseal_model",
    "unseal_model_stream",
    "unsealed_size",
    "unwrap",
    "verify_signature",
    "wrap",
]
