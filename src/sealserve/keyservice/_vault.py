"""The master key and what it seals: every key and grant the KeyService keeps at rest.

In production the master key would be sealed to the KeyService's own TEE identity.  In the
simulation it is a 0600 file in the data directory (created on first start) or the variable
``SEALSERVE_KEYSERVICE_MASTER_KEY`` (base64url of 32 bytes), read only inside the attested
KeyService process.

Each record is sealed with a context naming its kind and the row it belongs to, so a record
copied to another row (another model, user or version) does not unseal there.

The master key also derives (HKDF-SHA256, one label per use) the KeyService's own long-term
secrets: its HPKE and signing keys, and the key that authenticates its challenges.  Every
process that holds the same master key is therefore the same KeyService, which is what lets
several processes, on one machine or several, serve one database.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealserve._log import get_logger
from sealserve.crypto import SymmetricKey, canonical_encode, seal, unseal
from sealserve.errors import ConfigError, InvalidEnvelope, KeyServiceError

__all__ = ["MASTER_KEY_ENV", "Vault", "load_master_key"]

MASTER_KEY_ENV = "SEALSERVE_KEYSERVICE_MASTER_KEY"
_log = get_logger(__name__)
_KEY_BYTES = 32


def load_master_key(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    create: bool = True,
) -> SymmetricKey:
    """The master key: from ``$SEALSERVE_KEYSERVICE_MASTER_KEY`` if set, else the file.

    The file is created (0600, in a 0700 directory) when absent and ``create`` is true.  A file
    readable or writable by group or others is refused, as is one of the wrong size.
    """
    environ = os.environ if env is None else env
    encoded = environ.get(MASTER_KEY_ENV)
    if encoded:
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _KEY_BYTES:
            raise ConfigError(
                f"Config '{MASTER_KEY_ENV}' is not the base64url encoding of {_KEY_BYTES} bytes."
            )
        return SymmetricKey.from_bytes(raw)
    file = Path(path)
    if not file.exists():
        if not create:
            raise ConfigError(f"master key file '{file}' does not exist")
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = SymmetricKey.generate()
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.to_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        _log.event("vault.master_key_created", path=str(file))
        return key
    mode = file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"master key file '{file}' has mode {stat.S_IMODE(mode):o}; it must not be "
            f"accessible by group or others (chmod 600 '{file}')"
        )
    raw = file.read_bytes()
    if len(raw) != _KEY_BYTES:
        raise ConfigError(
            f"master key file '{file}' holds {len(raw)} bytes; a master key has {_KEY_BYTES}"
        )
    return SymmetricKey.from_bytes(raw)


class Vault:
    """Seals and unseals the KeyService's records under the master key."""

    def __init__(self, master_key: SymmetricKey) -> None:
        if not isinstance(master_key, SymmetricKey):
            raise TypeError(f"master_key must be a SymmetricKey, got {type(master_key).__name__}")
        self._key = master_key

    def seal(self, kind: str, row: Mapping[str, str], plaintext: bytes) -> bytes:
        return seal(self._key, plaintext, context=_context(kind, row))

    def unseal(self, kind: str, row: Mapping[str, str], sealed: bytes) -> bytes:
        """The plaintext of a record; :class:`KeyServiceError` when it does not unseal (a
        tampered or moved row, or another master key)."""
        try:
            return unseal(self._key, sealed, context=_context(kind, row))
        except InvalidEnvelope as exc:
            _log.event("vault.record_rejected", kind=kind)
            raise KeyServiceError(
                f"a {kind} record does not unseal under the master key: the database was "
                "tampered with or written under another master key"
            ) from exc

    def derive(self, label: str) -> bytes:
        """32 bytes derived from the master key for ``label`` (distinct labels never derive
        the same bytes).  For the KeyService's own keys only; never sent anywhere."""
        if not isinstance(label, str) or not label:
            raise ValueError(f"label must be a non-empty string, got {label!r}")
        info = canonical_encode({"purpose": "sealserve/keyservice/derived", "label": label})
        hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info)
        return hkdf.derive(self._key.to_bytes())

    def __repr__(self) -> str:
        return "Vault(<master key withheld>)"


def _context(kind: str, row: Mapping[str, str]) -> dict[str, str]:
    context = {"purpose": f"sealserve/keyservice/{kind}"}
    context.update(row)
    return context
