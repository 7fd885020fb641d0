"""Key wrapping to a public key with HPKE (RFC 9180), base mode.

This is how the KeyService releases a key to an attested runtime: the runtime makes a fresh
:class:`HpkeKeyPair`, binds its public key into its evidence, and the KeyService wraps each key
to that public key.  Two suites:

* :attr:`HpkeSuite.X25519_SHA256_AES256GCM` (the default): DHKEM(X25519, HKDF-SHA256),
  HKDF-SHA256, AES-256-GCM.
* :attr:`HpkeSuite.MLKEM768X25519_SHA256_AES256GCM`: the hybrid post-quantum KEM
  ML-KEM-768 + X25519 that ``cryptography`` ships, with the same KDF and AEAD.

A wrapped secret is ``version:u8=1 suite:u8 enc ciphertext``.  The HPKE ``info`` is
``b"sealserve/wrap\\0" + suite + canonical_encode(info)``: it binds what is wrapped and for
whom (``info`` must name a ``purpose``; add ids such as ``model_id`` and ``principal``).
Every failure of :func:`unwrap` is the same :class:`~sealserve.errors.InvalidEnvelope`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Mapping
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from sealserve._log import get_logger
from sealserve.crypto._buffers import Buffer
from sealserve.crypto._canonical import canonical_encode
from sealserve.errors import InvalidEnvelope

__all__ = ["MAX_WRAPPED_SECRET_BYTES", "HpkeKeyPair", "HpkeSuite", "unwrap", "wrap"]

_VERSION: Final = 1
_INFO_LABEL: Final = b"sealserve/wrap\x00"
_X25519_BYTES: Final = 32
_MLKEM768_PUBLIC_BYTES: Final = 1184
_MLKEM768_SEED_BYTES: Final = 64

#: Largest secret :func:`wrap` accepts: keys and small key bundles, not data.
MAX_WRAPPED_SECRET_BYTES: Final = 64 * 1024

_log = get_logger(__name__)


class HpkeSuite(enum.Enum):
    """The HPKE suites sealserve wraps keys with; the value is the suite byte on the wire."""

    X25519_SHA256_AES256GCM = 1
    MLKEM768X25519_SHA256_AES256GCM = 2

    @property
    def public_key_size(self) -> int:
        """Length of a public key of this suite, in bytes."""
        if self is HpkeSuite.X25519_SHA256_AES256GCM:
            return _X25519_BYTES
        return _MLKEM768_PUBLIC_BYTES + _X25519_BYTES

    @property
    def private_key_size(self) -> int:
        """Length of :meth:`HpkeKeyPair.to_private_bytes` for this suite, in bytes."""
        if self is HpkeSuite.X25519_SHA256_AES256GCM:
            return _X25519_BYTES
        return _MLKEM768_SEED_BYTES + _X25519_BYTES

    def _hpke(self) -> hpke.Suite:
        kem = (
            hpke.KEM.X25519
            if self is HpkeSuite.X25519_SHA256_AES256GCM
            else hpke.KEM.MLKEM768_X25519
        )
        return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


DEFAULT_SUITE: Final = HpkeSuite.X25519_SHA256_AES256GCM

_PrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
_PublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey


class HpkeKeyPair:
    """A recipient key pair for :func:`wrap` / :func:`unwrap`; ``repr`` shows no secret."""

    __slots__ = ("_private", "_public_bytes", "_seed", "_suite")

    def __init__(self, *, suite: HpkeSuite, seed: bytes) -> None:
        if not isinstance(suite, HpkeSuite):
            raise TypeError(f"suite must be an HpkeSuite, got {suite!r}")
        if len(seed) != suite.private_key_size:
            raise ValueError(
                f"a {suite.name} private key is {suite.private_key_size} bytes, got {len(seed)}"
            )
        self._suite = suite
        self._seed = bytes(seed)
        if suite is HpkeSuite.X25519_SHA256_AES256GCM:
            xkey = x25519.X25519PrivateKey.from_private_bytes(self._seed)
            self._private: _PrivateKey = xkey
            self._public_bytes = xkey.public_key().public_bytes_raw()
        else:
            mkey = mlkem.MLKEM768PrivateKey.from_seed_bytes(self._seed[:_MLKEM768_SEED_BYTES])
            xkey = x25519.X25519PrivateKey.from_private_bytes(self._seed[_MLKEM768_SEED_BYTES:])
            self._private = hpke.MLKEM768X25519PrivateKey(mkey, xkey)
            self._public_bytes = (
                mkey.public_key().public_bytes_raw() + xkey.public_key().public_bytes_raw()
            )

    @classmethod
    def generate(cls, *, suite: HpkeSuite = DEFAULT_SUITE) -> HpkeKeyPair:
        """A new key pair of ``suite``."""
        if not isinstance(suite, HpkeSuite):
            raise TypeError(f"suite must be an HpkeSuite, got {suite!r}")
        if suite is HpkeSuite.X25519_SHA256_AES256GCM:
            seed = x25519.X25519PrivateKey.generate().private_bytes_raw()
        else:
            seed = (
                mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
                + x25519.X25519PrivateKey.generate().private_bytes_raw()
            )
        return cls(suite=suite, seed=seed)

    @classmethod
    def from_private_bytes(cls, raw: Buffer, *, suite: HpkeSuite = DEFAULT_SUITE) -> HpkeKeyPair:
        """The key pair whose private part is ``raw`` (from :meth:`to_private_bytes`)."""
        return cls(suite=suite, seed=bytes(raw))

    @property
    def suite(self) -> HpkeSuite:
        return self._suite

    def public_key_bytes(self) -> bytes:
        """The public key to publish (and to bind into evidence)."""
        return self._public_bytes

    def to_private_bytes(self) -> bytes:
        """The private key, only to store it where the owner of the key pair keeps secrets."""
        return self._seed

    def __repr__(self) -> str:
        digest = hashlib.sha256(self._public_bytes).hexdigest()[:16]
        return f"HpkeKeyPair(suite={self._suite.name}, public_key_sha256={digest!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an HpkeKeyPair is not picklable")


def wrap(
    public_key: Buffer,
    secret: Buffer,
    *,
    info: Mapping[str, str],
    suite: HpkeSuite = DEFAULT_SUITE,
) -> bytes:
    """Encrypt ``secret`` (a key) to ``public_key``, binding ``info``; only the holder of the
    matching :class:`HpkeKeyPair` can :func:`unwrap` it, and only with the same ``info``."""
    if not isinstance(suite, HpkeSuite):
        raise TypeError(f"suite must be an HpkeSuite, got {suite!r}")
    data = bytes(secret)
    if len(data) > MAX_WRAPPED_SECRET_BYTES:
        raise ValueError(
            f"secret is {len(data)} bytes; wrap takes at most {MAX_WRAPPED_SECRET_BYTES}"
        )
    recipient = _load_public_key(bytes(public_key), suite)
    ciphertext = suite._hpke().encrypt(data, recipient, info=_hpke_info(suite, info))
    return bytes((_VERSION, suite.value)) + ciphertext


def unwrap(key_pair: HpkeKeyPair, wrapped: Buffer, *, info: Mapping[str, str]) -> bytes:
    """The secret inside ``wrapped``; every failure raises the same ``InvalidEnvelope``."""
    if not isinstance(key_pair, HpkeKeyPair):
        raise TypeError(f"key_pair must be an HpkeKeyPair, got {type(key_pair).__name__}")
    suite = key_pair.suite
    hpke_info = _hpke_info(suite, info)
    data = bytes(wrapped)
    kem_bytes = _enc_length(suite)
    if len(data) < 2 + kem_bytes + 16 or len(data) > 2 + kem_bytes + 16 + MAX_WRAPPED_SECRET_BYTES:
        _reject("length", length=len(data))
    if data[0] != _VERSION or data[1] != suite.value:
        _reject("version", version=data[0], suite=data[1])
    try:
        return suite._hpke().decrypt(data[2:], key_pair._private, info=hpke_info)
    except (InvalidTag, ValueError):
        _reject("decrypt")


def _enc_length(suite: HpkeSuite) -> int:
    kem = (
        hpke.KEM.X25519 if suite is HpkeSuite.X25519_SHA256_AES256GCM else hpke.KEM.MLKEM768_X25519
    )
    return kem.enc_length()


def _load_public_key(raw: bytes, suite: HpkeSuite) -> _PublicKey:
    if len(raw) != suite.public_key_size:
        raise ValueError(
            f"a {suite.name} public key is {suite.public_key_size} bytes, got {len(raw)}"
        )
    try:
        if suite is HpkeSuite.X25519_SHA256_AES256GCM:
            return x25519.X25519PublicKey.from_public_bytes(raw)
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_BYTES]),
            x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_BYTES:]),
        )
    except ValueError as exc:
        raise ValueError(f"public_key is not a valid {suite.name} public key") from exc


def _hpke_info(suite: HpkeSuite, info: Mapping[str, str]) -> bytes:
    if not isinstance(info, Mapping):
        raise TypeError(f"info must be a mapping of str to str, got {type(info).__name__}")
    purpose = info.get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"info must name a non-empty 'purpose', got {purpose!r}")
    for name, value in info.items():
        if not isinstance(value, str):
            raise TypeError(f"info[{name!r}] must be str, got {type(value).__name__}")
    return _INFO_LABEL + bytes((suite.value,)) + canonical_encode(info)


def _reject(reason: str, **detail: int) -> NoReturn:
    _log.event("wrap.rejected", level=logging.DEBUG, reason=reason, **detail)
    raise InvalidEnvelope()
