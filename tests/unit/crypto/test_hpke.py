from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from sealserve.crypto import MAX_WRAPPED_SECRET_BYTES, HpkeKeyPair, HpkeSuite, unwrap, wrap
from sealserve.errors import InvalidEnvelope

VECTORS = json.loads((Path(__file__).parent / "vectors" / "crypto_v1.json").read_text())
INFO = {"purpose": "model-key", "model_id": "m-1", "principal": "ab" * 32}
SUITES = list(HpkeSuite)


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_round_trip(suite: HpkeSuite) -> None:
    pair = HpkeKeyPair.generate(suite=suite)
    assert pair.suite is suite
    assert len(pair.public_key_bytes()) == suite.public_key_size
    wrapped = wrap(pair.public_key_bytes(), b"\x01" * 32, info=INFO, suite=suite)
    assert unwrap(pair, wrapped, info=INFO) == b"\x01" * 32


def test_default_suite_is_x25519() -> None:
    pair = HpkeKeyPair.generate()
    assert pair.suite is HpkeSuite.X25519_SHA256_AES256GCM
    wrapped = wrap(pair.public_key_bytes(), b"k", info=INFO)
    assert wrapped[:2] == b"\x01\x01"


@pytest.mark.parametrize("name", ["wrap", "wrap_hybrid"])
def test_known_answers_still_unwrap(name: str) -> None:
    kat = VECTORS[name]
    suite = HpkeSuite[kat["suite"]]
    pair = HpkeKeyPair.from_private_bytes(bytes.fromhex(kat["private_key"]), suite=suite)
    if "public_key" in kat:
        assert pair.public_key_bytes().hex() == kat["public_key"]
    secret = unwrap(pair, bytes.fromhex(kat["wrapped"]), info=kat["info"])
    assert secret == bytes.fromhex(kat["secret"])


def test_private_bytes_round_trip() -> None:
    for suite in SUITES:
        pair = HpkeKeyPair.generate(suite=suite)
        again = HpkeKeyPair.from_private_bytes(pair.to_private_bytes(), suite=suite)
        assert again.public_key_bytes() == pair.public_key_bytes()


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_every_failure_is_the_same_error(suite: HpkeSuite) -> None:
    pair = HpkeKeyPair.generate(suite=suite)
    wrapped = wrap(pair.public_key_bytes(), b"secret", info=INFO, suite=suite)
    other_suite = next(s for s in SUITES if s is not suite)
    cases = [
        (HpkeKeyPair.generate(suite=suite), wrapped, INFO),  # another recipient
        (pair, wrapped, {**INFO, "model_id": "m-2"}),  # another model
        (pair, wrapped, {**INFO, "principal": "cd" * 32}),  # for someone else
        (pair, wrapped[:-1], INFO),
        (pair, wrapped + b"\x00", INFO),
        (pair, b"\x02" + wrapped[1:], INFO),
        (pair, wrapped[:1] + bytes([other_suite.value]) + wrapped[2:], INFO),
        (pair, wrapped[:40] + bytes([wrapped[40] ^ 1]) + wrapped[41:], INFO),
        (pair, b"", INFO),
    ]
    for key_pair, blob, info in cases:
        with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
            unwrap(key_pair, blob, info=info)


def test_a_secret_for_one_suite_does_not_unwrap_with_another_key_type() -> None:
    classic = HpkeKeyPair.generate()
    hybrid = HpkeKeyPair.generate(suite=HpkeSuite.MLKEM768X25519_SHA256_AES256GCM)
    wrapped = wrap(classic.public_key_bytes(), b"s", info=INFO)
    with pytest.raises(InvalidEnvelope):
        unwrap(hybrid, wrapped, info=INFO)


def test_caller_mistakes() -> None:
    pair = HpkeKeyPair.generate()
    with pytest.raises(ValueError, match="32 bytes"):
        wrap(b"short", b"s", info=INFO)
    with pytest.raises(ValueError, match="1216 bytes"):
        wrap(
            pair.public_key_bytes(),
            b"s",
            info=INFO,
            suite=HpkeSuite.MLKEM768X25519_SHA256_AES256GCM,
        )
    with pytest.raises(ValueError, match="at most"):
        wrap(pair.public_key_bytes(), bytes(MAX_WRAPPED_SECRET_BYTES + 1), info=INFO)
    with pytest.raises(ValueError, match="purpose"):
        wrap(pair.public_key_bytes(), b"s", info={"model_id": "m"})
    with pytest.raises(TypeError, match="HpkeSuite"):
        HpkeKeyPair.generate(suite="X25519")  # type: ignore[arg-type]


def test_repr_and_pickling_keep_the_private_key() -> None:
    pair = HpkeKeyPair.generate()
    assert pair.to_private_bytes().hex() not in repr(pair)
    with pytest.raises(TypeError, match="picklable"):
        pickle.dumps(pair)
