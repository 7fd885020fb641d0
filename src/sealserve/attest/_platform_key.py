"""The simulated platform's secrets: ``<data-dir>/tee/platform.key`` and its published public
key, and ``<data-dir>/tee/sealing.key``, the root of its sealing keys.

The private key is an Ed25519 identity file (PKCS#8 PEM, mode 0600, refused when others may
read it); the public key is published next to it as one line of hex in ``platform.pub``, which
is what verifiers pin (:meth:`~sealserve.attest.TrustAnchors.from_data_dir`).  The sealing root
is 32 random bytes (0600, refused when others may read it), the simulated stand-in for the
CPU's sealing secret (:mod:`sealserve.attest._sealing`).  Only the platform process (the
stand-in for hardware) ever loads either.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Final

from sealserve.crypto import Identity
from sealserve.errors import TeeError

__all__ = [
    "load_or_create_platform_key",
    "load_or_create_sealing_root",
    "platform_key_paths",
    "read_platform_public_key",
]

_KEY_NAME: Final = "platform.key"
_PUB_NAME: Final = "platform.pub"
_SEALING_NAME: Final = "sealing.key"
_SEALING_BYTES: Final = 32


def platform_key_paths(data_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(private key file, public key file) of the platform rooted at ``data_dir``."""
    tee = Path(data_dir) / "tee"
    return tee / _KEY_NAME, tee / _PUB_NAME


def load_or_create_platform_key(data_dir: str | os.PathLike[str]) -> Identity:
    """Load the platform key, generating it (and publishing its public key) the first time."""
    key_path, pub_path = platform_key_paths(data_dir)
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if key_path.exists():
        identity = Identity.load(key_path)
    else:
        identity = Identity.generate()
        identity.save(key_path)
    published = identity.public_key_bytes.hex() + "\n"
    if not pub_path.exists() or pub_path.read_text() != published:
        tmp = pub_path.with_name(pub_path.name + ".tmp")
        tmp.write_text(published)
        tmp.chmod(0o644)
        tmp.replace(pub_path)
    return identity


def read_platform_public_key(data_dir: str | os.PathLike[str]) -> bytes:
    """The published platform public key (32 raw bytes) that verifiers pin."""
    _, pub_path = platform_key_paths(data_dir)
    try:
        text = pub_path.read_text().strip()
    except FileNotFoundError:
        raise TeeError(
            f"No simulated platform public key at '{pub_path}'. Start the platform once to "
            f"create it: sealserve up --data-dir '{data_dir}' (the whole system), or "
            f"sealserve attest platform serve --data-dir '{data_dir}' (the platform alone)."
        ) from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise TeeError(f"'{pub_path}' does not hold a 32-byte Ed25519 public key in hex.")
    return raw


def load_or_create_sealing_root(data_dir: str | os.PathLike[str]) -> bytes:
    """The platform's sealing root (32 bytes), generated the first time (0600)."""
    path = Path(data_dir) / "tee" / _SEALING_NAME
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under another name, then linked: a racing first start sees either no
        # file or a complete one, and exactly one root wins.
        tmp = path.with_name(f"{_SEALING_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(_SEALING_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TeeError(
            f"'{path}' has mode {stat.S_IMODE(mode):o}; the sealing root must not be accessible "
            f"by group or others (chmod 600 '{path}')"
        )
    raw = path.read_bytes()
    if len(raw) != _SEALING_BYTES:
        raise TeeError(f"'{path}' holds {len(raw)} bytes; a sealing root has {_SEALING_BYTES}")
    return raw
