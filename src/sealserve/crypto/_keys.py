"""Symmetric keys: the AES-256 key of envelopes and models, and a user's request key.

The library generates keys; callers never call ``os.urandom``.  A key's ``repr`` never shows
its material, and its :attr:`~SymmetricKey.fingerprint` (a keyed hash, safe to log) is how logs
and tables refer to it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealserve.crypto._buffers import Buffer
from sealserve.crypto._canonical import canonical_encode

__all__ = ["KEY_BYTES", "RequestKey", "SymmetricKey", "derive_key"]

#: Length of every symmetric key (AES-256).
KEY_BYTES: Final = 32


def derive_key(ikm: Buffer, *, salt: Buffer | None, label: str, **context: str | int) -> bytes:
    """HKDF-SHA256 of ``ikm`` to a 32-byte key; ``label`` and ``context`` form the ``info``.

    The ``info`` is the canonical encoding of ``{"label": label, **context}``, so distinct
    labels or contexts can never derive the same key.
    """
    if not label:
        raise ValueError("label must not be empty")
    info = canonical_encode({"label": label, **context})
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_opt_bytes(salt), info=info)
    return hkdf.derive(bytes(ikm))


class SymmetricKey:
    """An AES-256 key.

    >>> key = SymmetricKey.generate()
    >>> SymmetricKey.from_bytes(key.to_bytes()) == key
    True
    """

    __slots__ = ("_aead", "_fingerprint", "_raw")

    def __init__(self, raw: Buffer, /) -> None:
        raw = bytes(raw)
        if len(raw) != KEY_BYTES:
            raise ValueError(f"a SymmetricKey is {KEY_BYTES} bytes, got {len(raw)}")
        self._raw = raw
        self._aead = AESGCM(raw)
        mac = hmac.new(raw, b"sealserve/key-fingerprint/v1", hashlib.sha256)
        self._fingerprint = mac.hexdigest()[:16]

    @classmethod
    def generate(cls) -> SymmetricKey:
        """A new random key."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_bytes(cls, raw: Buffer) -> SymmetricKey:
        """The key whose material is ``raw`` (32 bytes), e.g. after unwrapping it."""
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise TypeError(f"raw must be bytes, got {type(raw).__name__}")
        return cls(raw)

    def to_bytes(self) -> bytes:
        """The key material: only to wrap it (:func:`~sealserve.crypto.wrap`) or store it."""
        return self._raw

    @property
    def fingerprint(self) -> str:
        """16 hex digits that name this key without revealing it (safe to log)."""
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SymmetricKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"SymmetricKey(fingerprint={self.fingerprint!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SymmetricKey is not picklable; use to_bytes() and wrap it")


class RequestKey:
    """A user's key for one (model, policy): inputs and outputs get different subkeys.

    The two subkeys are derived with HKDF under distinct labels, so an output is never sealed
    under the key (and nonce space) of an input.
    """

    __slots__ = ("_input", "_output", "_root")

    def __init__(self, raw: Buffer, /) -> None:
        self._root = SymmetricKey(raw)
        root = self._root.to_bytes()
        self._input = SymmetricKey(derive_key(root, salt=None, label="sealserve/request/input"))
        self._output = SymmetricKey(derive_key(root, salt=None, label="sealserve/request/output"))

    @classmethod
    def generate(cls) -> RequestKey:
        """A new random request key."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_bytes(cls, raw: Buffer) -> RequestKey:
        """The request key whose root material is ``raw`` (32 bytes)."""
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise TypeError(f"raw must be bytes, got {type(raw).__name__}")
        return cls(raw)

    def to_bytes(self) -> bytes:
        """The root material: only to wrap it or hand it to the KeyService."""
        return self._root.to_bytes()

    @property
    def input_key(self) -> SymmetricKey:
        """Seals a request's input (client) and unseals it (runtime)."""
        return self._input

    @property
    def output_key(self) -> SymmetricKey:
        """Seals a request's output (runtime) and unseals it (client)."""
        return self._output

    @property
    def fingerprint(self) -> str:
        """16 hex digits that name this key without revealing it (safe to log)."""
        return self._root.fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestKey):
            return NotImplemented
        return self._root == other._root

    def __hash__(self) -> int:
        return hash(self._root)

    def __repr__(self) -> str:
        return f"RequestKey(fingerprint={self.fingerprint!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a RequestKey is not picklable; use to_bytes() and wrap it")


def _opt_bytes(value: Buffer | None) -> bytes | None:
    return None if value is None else bytes(value)
