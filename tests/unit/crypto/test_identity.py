from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from sealserve.crypto import Identity, principal_id, verify_signature
from sealserve.errors import IdentityError, InvalidSignature


def test_principal_id_is_sha256_of_the_raw_public_key() -> None:
    me = Identity.generate()
    assert me.principal_id == hashlib.sha256(me.public_key_bytes).hexdigest()
    assert principal_id(me.public_key_bytes) == me.principal_id
    with pytest.raises(ValueError, match="32 bytes"):
        principal_id(b"short")


def test_sign_and_verify() -> None:
    me = Identity.generate()
    sig = me.sign(b"message")
    verify_signature(me.public_key_bytes, b"message", sig)
    for key, data, signature in [
        (me.public_key_bytes, b"messagE", sig),
        (Identity.generate().public_key_bytes, b"message", sig),
        (me.public_key_bytes, b"message", sig[:-1]),
        (b"not a key", b"message", sig),
    ]:
        with pytest.raises(InvalidSignature):
            verify_signature(key, data, signature)


def test_save_writes_0600_and_load_round_trips(tmp_path: Path) -> None:
    me = Identity.generate()
    path = me.save(tmp_path / "sub" / "alice.pem")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Identity.load(path) == me
    assert [p.name for p in path.parent.iterdir()] == ["alice.pem"]  # no temporary left


def test_save_does_not_overwrite_unless_asked(tmp_path: Path) -> None:
    first = Identity.generate()
    path = first.save(tmp_path / "id.pem")
    with pytest.raises(IdentityError, match="already exists"):
        Identity.generate().save(path)
    second = Identity.generate()
    second.save(path, overwrite=True)
    assert Identity.load(path) == second


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_load_refuses_a_file_others_may_read(tmp_path: Path, mode: int) -> None:
    path = Identity.generate().save(tmp_path / "id.pem")
    os.chmod(path, mode)
    with pytest.raises(IdentityError, match=f"mode {mode:04o}.*chmod 600"):
        Identity.load(path)


def test_load_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        Identity.load(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(IdentityError, match="PKCS#8"):
        Identity.load(junk)
    with pytest.raises(IdentityError, match="regular file"):
        Identity.load(tmp_path)


def test_load_refuses_a_key_of_another_type(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "ec.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="Ed25519"):
        Identity.load(path)


def test_repr_shows_only_the_principal() -> None:
    me = Identity.generate()
    assert me.principal_id in repr(me)
