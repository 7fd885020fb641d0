"""The wire's known-answer vectors (tests/vectors/*.json, docs/protocol.md) against the
Python implementation: every valid vector is reproduced byte for byte and opened, and every
invalid one is refused with its fixed error."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from sealserve._clock import ManualClock
from sealserve.crypto import (
    Identity,
    RequestKey,
    RequestVerifier,
    SymmetricKey,
    canonical_decode,
    canonical_encode,
    principal_id,
    unseal,
    unseal_into,
)
from sealserve.crypto._fixed_nonce import (
    seal_with_fixed_nonce_for_test_vectors,
    sign_request_with_fixed_nonce_for_test_vectors,
)
from sealserve.crypto._keys import derive_key
from sealserve.errors import InvalidEnvelope, InvalidSignature, TensorFormatError
from sealserve.protocol import (
    decode_tensors,
    encode_tensors,
    input_context,
    output_context,
    unseal_output,
)
from sealserve.protocol._vectors import FILES, generate

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
ERRORS: dict[str, type[Exception]] = {
    "InvalidEnvelope": InvalidEnvelope,
    "InvalidSignature": InvalidSignature,
    "TensorFormatError": TensorFormatError,
    "ValueError": ValueError,
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text("ascii"))
    return data


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def entries(typed: list[dict[str, str]]) -> dict[str, str | int | bytes]:
    out: dict[str, str | int | bytes] = {}
    for entry in typed:
        value = entry["value"]
        kind = entry["type"]
        out[entry["key"]] = (
            value if kind == "s" else int(value) if kind == "i" else bytes.fromhex(value)
        )
    return out


def tensors(items: list[dict[str, Any]]) -> dict[str, npt.NDArray[Any]]:
    out = {}
    for item in items:
        dtype = np.dtype(item["dtype"]).newbyteorder("<")
        raw = bytes.fromhex(item["data_hex"])
        out[item["name"]] = np.frombuffer(raw, dtype=dtype).reshape(item["shape"])
    return out


def assert_same_tensors(
    got: dict[str, npt.NDArray[Any]], want: dict[str, npt.NDArray[Any]]
) -> None:
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype
        assert got[name].shape == array.shape
        assert got[name].tobytes() == array.tobytes()


# -- the files -----------------------------------------------------------------------------------


def test_the_committed_files_are_what_the_generator_makes() -> None:
    """scripts/gen-vectors rewrites them; a change of the wire must show up here."""
    made = generate()
    assert sorted(made) == sorted(p.name for p in VECTORS.glob("*.json"))
    for name, text in made.items():
        assert (VECTORS / name).read_text("ascii") == text, f"{name}: run scripts/gen-vectors"


def test_every_file_names_its_spec_section_and_has_vectors() -> None:
    spec = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text("utf-8")
    for name in FILES:
        data = load(name)
        anchor = data["spec"].split("#", 1)[1]
        assert f"## {anchor.replace('-', ' ')}" in spec.lower(), anchor
        assert data.get("valid") or data.get("hkdf")


# -- canonical encoding --------------------------------------------------------------------------

CANONICAL = load("canonical.json")


@pytest.mark.parametrize("vector", CANONICAL["valid"], ids=ids(CANONICAL["valid"]))
def test_canonical_valid(vector: dict[str, Any]) -> None:
    mapping = entries(vector["entries"])
    encoding = bytes.fromhex(vector["encoding_hex"])
    assert canonical_encode(mapping) == encoding
    assert canonical_decode(encoding) == mapping


@pytest.mark.parametrize("vector", CANONICAL["invalid"], ids=ids(CANONICAL["invalid"]))
def test_canonical_invalid(vector: dict[str, Any]) -> None:
    with pytest.raises(ERRORS[vector["error"]]):
        canonical_decode(bytes.fromhex(vector["encoding_hex"]))


# -- key derivation ------------------------------------------------------------------------------

KEYS = load("keys.json")


@pytest.mark.parametrize("vector", KEYS["hkdf"], ids=ids(KEYS["hkdf"]))
def test_hkdf(vector: dict[str, Any]) -> None:
    context = entries(vector["context"])
    info = canonical_encode({"label": vector["label"], **context})
    assert info.hex() == vector["info_hex"]
    salt = None if vector["salt_hex"] is None else bytes.fromhex(vector["salt_hex"])
    okm = derive_key(
        bytes.fromhex(vector["ikm_hex"]),
        salt=salt,
        label=vector["label"],
        **context,  # type: ignore[arg-type]
    )
    assert okm.hex() == vector["okm_hex"]


@pytest.mark.parametrize("vector", KEYS["request_keys"], ids=ids(KEYS["request_keys"]))
def test_request_key_subkeys(vector: dict[str, Any]) -> None:
    key = RequestKey.from_bytes(bytes.fromhex(vector["root_hex"]))
    assert key.input_key.to_bytes().hex() == vector["input_key_hex"]
    assert key.output_key.to_bytes().hex() == vector["output_key_hex"]
    assert canonical_encode({"label": "sealserve/request/input"}).hex() == vector["input_info_hex"]


# -- envelopes -----------------------------------------------------------------------------------

ENVELOPES = load("envelopes.json")


@pytest.mark.parametrize("vector", ENVELOPES["valid"], ids=ids(ENVELOPES["valid"]))
def test_envelope_valid(vector: dict[str, Any]) -> None:
    key = SymmetricKey(bytes.fromhex(vector["key_hex"]))
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    envelope = bytes.fromhex(vector["envelope_hex"])
    made = seal_with_fixed_nonce_for_test_vectors(
        key,
        plaintext,
        context=vector["context"],
        sealed_at=vector["sealed_at"],
        nonce=bytes.fromhex(vector["nonce_hex"]),
    )
    assert made == envelope
    assert envelope[:2] == b"\x01\x01"
    assert int.from_bytes(envelope[2:10], "big") == vector["sealed_at"]
    assert envelope[10:22].hex() == vector["nonce_hex"]
    clock = ManualClock(start=float(vector["sealed_at"]))
    opened = unseal(key, envelope, context=vector["context"], max_age_s=60, clock=clock)
    assert opened == plaintext
    out = bytearray(len(plaintext))
    assert unseal_into(key, envelope, out, context=vector["context"]) == len(plaintext)
    assert bytes(out) == plaintext


@pytest.mark.parametrize("vector", ENVELOPES["invalid"], ids=ids(ENVELOPES["invalid"]))
def test_envelope_invalid(vector: dict[str, Any]) -> None:
    key = SymmetricKey(bytes.fromhex(vector["key_hex"]))
    envelope = bytes.fromhex(vector["envelope_hex"])
    clock = ManualClock(start=float(vector.get("now", 0)))
    max_age = vector.get("max_age_s")
    with pytest.raises(InvalidEnvelope) as caught:
        unseal(key, envelope, context=vector["context"], max_age_s=max_age, clock=clock)
    assert type(caught.value) is ERRORS[vector["error"]]
    out = bytearray(max(0, len(envelope) - 38))
    with pytest.raises(InvalidEnvelope):
        unseal_into(key, envelope, out, context=vector["context"], max_age_s=max_age, clock=clock)
    assert not any(out)


# -- the tensor container ------------------------------------------------------------------------

TENSORS = load("tensors.json")


@pytest.mark.parametrize("vector", TENSORS["valid"], ids=ids(TENSORS["valid"]))
def test_tensors_valid(vector: dict[str, Any]) -> None:
    want = tensors(vector["tensors"])
    encoding = bytes.fromhex(vector["encoding_hex"])
    assert encode_tensors(want) == encoding
    assert_same_tensors(decode_tensors(encoding), want)
    assert_same_tensors(decode_tensors(encoding, copy=False), want)


@pytest.mark.parametrize("vector", TENSORS["invalid"], ids=ids(TENSORS["invalid"]))
def test_tensors_invalid(vector: dict[str, Any]) -> None:
    with pytest.raises(ERRORS[vector["error"]]):
        decode_tensors(bytes.fromhex(vector["encoding_hex"]))


# -- a whole inference ---------------------------------------------------------------------------

INFERENCE = load("inference.json")


@pytest.mark.parametrize("vector", INFERENCE["valid"], ids=ids(INFERENCE["valid"]))
def test_inference_valid(vector: dict[str, Any]) -> None:
    key = RequestKey.from_bytes(bytes.fromhex(vector["request_key_hex"]))
    names = {k: vector[k] for k in ("model_id", "user_id", "request_id")}
    for side, subkey, context in (
        ("input", key.input_key, input_context(**names)),
        ("output", key.output_key, output_context(**names)),
    ):
        part = vector[side]
        assert part["context"] == context
        plaintext = encode_tensors(tensors(part["tensors"]))
        assert plaintext.hex() == part["plaintext_hex"]
        made = seal_with_fixed_nonce_for_test_vectors(
            subkey,
            plaintext,
            context=context,
            sealed_at=vector["sealed_at"],
            nonce=bytes.fromhex(part["nonce_hex"]),
        )
        assert made.hex() == part["envelope_hex"]
    sealed_input = bytes.fromhex(vector["input"]["envelope_hex"])
    opened = decode_tensors(unseal(key.input_key, sealed_input, context=input_context(**names)))
    assert_same_tensors(opened, tensors(vector["input"]["tensors"]))
    outputs = unseal_output(key, bytes.fromhex(vector["output"]["envelope_hex"]), **names)
    assert_same_tensors(outputs, tensors(vector["output"]["tensors"]))


@pytest.mark.parametrize("vector", INFERENCE["invalid"], ids=ids(INFERENCE["invalid"]))
def test_inference_invalid(vector: dict[str, Any]) -> None:
    key = RequestKey.from_bytes(bytes.fromhex(vector["request_key_hex"]))
    names = {k: vector[k] for k in ("model_id", "user_id", "request_id")}
    assert vector["direction"] == "output"
    with pytest.raises(ERRORS[vector["error"]]):
        unseal_output(key, bytes.fromhex(vector["envelope_hex"]), **names)


# -- signed requests -----------------------------------------------------------------------------

SIGNED = load("signed_requests.json")


@pytest.mark.parametrize("vector", SIGNED["valid"], ids=ids(SIGNED["valid"]))
def test_signed_request_valid(vector: dict[str, Any]) -> None:
    seed = bytes.fromhex(vector["seed_hex"])
    identity = Identity(ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    assert identity.public_key_bytes.hex() == vector["public_key_hex"]
    assert principal_id(identity.public_key_bytes) == vector["principal_id"]
    body = bytes.fromhex(vector["body_hex"])
    headers = sign_request_with_fixed_nonce_for_test_vectors(
        identity,
        method=vector["method"],
        path=vector["path"],
        body=body,
        timestamp=vector["timestamp"],
        nonce=vector["nonce"],
    )
    assert headers == vector["headers"]
    signature = base64.urlsafe_b64decode(headers["x-sealserve-signature"])
    assert signature.hex() == vector["signature_hex"]
    assert identity.sign(bytes.fromhex(vector["message_hex"])) == signature
    verifier = RequestVerifier(clock=ManualClock(start=float(vector["timestamp"])))
    signed = verifier.verify(
        identity.public_key_bytes,
        method=vector["method"],
        path=vector["path"],
        body=body,
        headers=vector["headers"],
    )
    assert signed.principal_id == vector["principal_id"]


@pytest.mark.parametrize("vector", SIGNED["invalid"], ids=ids(SIGNED["invalid"]))
def test_signed_request_invalid(vector: dict[str, Any]) -> None:
    verifier = RequestVerifier(
        replay_window_s=vector["replay_window_s"], clock=ManualClock(start=float(vector["now"]))
    )
    with pytest.raises(ERRORS[vector["error"]]):
        verifier.check(
            bytes.fromhex(vector["public_key_hex"]),
            method=vector["method"],
            path=vector["path"],
            body=bytes.fromhex(vector["body_hex"]),
            headers=vector["headers"],
        )
