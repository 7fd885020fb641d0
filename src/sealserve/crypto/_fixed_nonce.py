"""TEST VECTORS ONLY: seal and sign with a nonce and a time chosen by the caller.

Known-answer vectors (``tests/vectors/*.json``, docs/protocol.md) need fixed bytes, and an
envelope or a signed request made with a chosen nonce is the one thing sealserve's everyday
calls never allow: reusing a (key, nonce) pair under AES-GCM gives away the key stream and the
authentication key.  These functions run the very code of :func:`~sealserve.crypto.seal` and
:func:`~sealserve.crypto.sign_request` (so the vectors pin what production emits), with the
nonce and the time passed in.

Nothing in sealserve may import this module but the vector generator
(:mod:`sealserve.protocol._vectors`); ``tests/unit/crypto/test_fixed_nonce_guard.py`` scans
the source tree and fails on any other import.  It is not re-exported by
:mod:`sealserve.crypto`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from sealserve.crypto._buffers import Buffer
from sealserve.crypto._envelope import _seal
from sealserve.crypto._identity import Identity
from sealserve.crypto._keys import SymmetricKey
from sealserve.crypto._signing import _signed_headers

__all__ = [
    "seal_with_fixed_nonce_for_test_vectors",
    "sign_request_with_fixed_nonce_for_test_vectors",
]

_NONCE_BYTES: Final = 12
_REQUEST_NONCE_HEX: Final = 32


def seal_with_fixed_nonce_for_test_vectors(
    key: SymmetricKey,
    plaintext: Buffer,
    *,
    context: Mapping[str, str],
    sealed_at: int,
    nonce: bytes,
) -> bytes:
    """The envelope :func:`~sealserve.crypto.seal` would make had it drawn ``nonce`` at
    ``sealed_at``.  Never use it for data: a repeated nonce breaks AES-GCM."""
    if not isinstance(nonce, bytes) or len(nonce) != _NONCE_BYTES:
        raise ValueError(f"nonce must be {_NONCE_BYTES} bytes, got {nonce!r}")
    if isinstance(sealed_at, bool) or not isinstance(sealed_at, int) or sealed_at < 0:
        raise ValueError(f"sealed_at must be an int >= 0, got {sealed_at!r}")
    return _seal(key, plaintext, context, sealed_at, nonce)


def sign_request_with_fixed_nonce_for_test_vectors(
    identity: Identity,
    *,
    method: str,
    path: str,
    body: Buffer,
    timestamp: int,
    nonce: str,
) -> dict[str, str]:
    """The headers :func:`~sealserve.crypto.sign_request` would make had it drawn ``nonce``
    (32 lowercase hex digits) at ``timestamp``."""
    if (
        not isinstance(nonce, str)
        or len(nonce) != _REQUEST_NONCE_HEX
        or any(c not in "0123456789abcdef" for c in nonce)
    ):
        raise ValueError(f"nonce must be {_REQUEST_NONCE_HEX} lowercase hex digits, got {nonce!r}")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be an int >= 0, got {timestamp!r}")
    return _signed_headers(identity, method, path, body, timestamp, nonce)
