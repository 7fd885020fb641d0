"""Identities: the Ed25519 key pairs of owners, users and the KeyService.

A principal is named by the hex SHA-256 of its raw 32-byte public key
(:func:`principal_id`).  Identity files are PKCS#8 PEM (readable by ``openssl pkey``), written
with mode 0600 through a temporary file and an atomic rename, and refused on load when group
or others may read them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Final, NoReturn

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sealserve.crypto._buffers import Buffer
from sealserve.errors import IdentityError, InvalidSignature

__all__ = ["PUBLIC_KEY_BYTES", "SIGNATURE_BYTES", "Identity", "principal_id", "verify_signature"]

PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
_MAX_FILE_BYTES: Final = 64 * 1024


def principal_id(public_key: Buffer) -> str:
    """The principal id of an Ed25519 public key: hex SHA-256 of its 32 raw bytes."""
    raw = bytes(public_key)
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return hashlib.sha256(raw).hexdigest()


def verify_signature(public_key: Buffer, data: Buffer, signature: Buffer) -> None:
    """Check an Ed25519 ``signature`` of ``data``; raise ``InvalidSignature`` if it is not one.

    A public key of the wrong length or not on the curve also raises ``InvalidSignature``
    (the caller learns nothing more).
    """
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(bytes(public_key))
        key.verify(bytes(signature), bytes(data))
    except (_CryptoInvalidSignature, ValueError):
        raise InvalidSignature() from None


class Identity:
    """An Ed25519 signing identity.

    >>> alice = Identity.generate()
    >>> sig = alice.sign(b"hello")
    >>> verify_signature(alice.public_key_bytes, b"hello", sig)
    """

    __slots__ = ("_key", "_principal_id", "_public")

    def __init__(self, private_key: ed25519.Ed25519PrivateKey, /) -> None:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise TypeError(
                f"private_key must be an Ed25519PrivateKey, got {type(private_key).__name__}"
            )
        self._key = private_key
        self._public = private_key.public_key().public_bytes_raw()
        self._principal_id = principal_id(self._public)

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read an identity file; ``IdentityError`` if missing, malformed or too open."""
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise IdentityError(
                f"Identity file '{target}' does not exist. Create one with "
                "Identity.generate().save(path)."
            ) from None
        except OSError as exc:
            raise IdentityError(f"Identity file '{target}' cannot be opened: {exc}.") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IdentityError(f"Identity file '{target}' is not a regular file.")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise IdentityError(
                    f"Identity file '{target}' has mode {mode:04o}: group or others may read "
                    f"it. Run: chmod 600 '{target}'."
                )
            data = os.read(fd, _MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_FILE_BYTES:
            raise IdentityError(f"Identity file '{target}' is too large to be an identity.")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(
                f"Identity file '{target}' is not an unencrypted PKCS#8 PEM private key."
            ) from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise IdentityError(f"Identity file '{target}' does not hold an Ed25519 key.")
        return cls(key)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write this identity to ``path`` with mode 0600 (atomically); return the path.

        The parent directory is created (mode 0700) if missing.  An existing file is
        replaced only with ``overwrite=True``.
        """
        target = Path(path)
        if target.exists() and not overwrite:
            raise IdentityError(
                f"Identity file '{target}' already exists; pass overwrite=True to replace it."
            )
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = self._key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        fd, tmp_name = tempfile.mkstemp(prefix=".identity-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target

    @property
    def principal_id(self) -> str:
        """Hex SHA-256 of :attr:`public_key_bytes`."""
        return self._principal_id

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public

    def sign(self, data: Buffer) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(bytes(data))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return self._public == other._public

    def __hash__(self) -> int:
        return hash(self._public)

    def __repr__(self) -> str:
        return f"Identity(principal_id={self._principal_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an Identity is not picklable; use save() and load()")
