"""The known-answer vectors of the wire (docs/protocol.md), made by sealserve's own code.

``python -m sealserve.protocol._vectors`` writes ``tests/vectors/*.json`` (``--check`` only
compares); ``scripts/gen-vectors`` runs it.  Everything is deterministic: every key, seed and
nonce is the SHA-256 of a fixed label, and every time is fixed; envelopes and signatures come
from the production code through :mod:`sealserve.crypto._fixed_nonce` (the only importer of
that module).  Each file holds ``valid`` vectors (what an implementation must produce and
accept byte for byte) and ``invalid`` ones (what it must refuse, and with which error).

Binary values are lowercase hex (``*_hex``); a tensor is ``{"name", "dtype", "shape",
"data_hex"}`` with its data little-endian in C order; a typed canonical entry is
``{"key", "type": "s"|"i"|"b", "value"}`` (``i``: a decimal string, ``b``: hex).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import ed25519

from sealserve.crypto import Identity, RequestKey, SymmetricKey, canonical_encode
from sealserve.crypto._fixed_nonce import (
    seal_with_fixed_nonce_for_test_vectors,
    sign_request_with_fixed_nonce_for_test_vectors,
)
from sealserve.crypto._keys import derive_key
from sealserve.protocol._envelopes import input_context, output_context
from sealserve.protocol._tensors import encode_tensors

__all__ = ["FILES", "SEALED_AT", "fixed_bytes", "generate", "main", "tensor_json", "write"]

#: Every envelope of the vectors says it was sealed at this Unix time (2024-01-01T00:00:00Z).
SEALED_AT: Final = 1_704_067_200
_ENVELOPE_LABEL: Final = b"sealserve/envelope\x00"
_DOC: Final = "docs/protocol.md"


def fixed_bytes(label: str, n: int = 32) -> bytes:
    """``n`` bytes fixed by ``label``: SHA-256 of ``b"sealserve/test-vector/" + label``,
    extended with SHA-256 of the previous block when more are needed."""
    out = b""
    block = b"sealserve/test-vector/" + label.encode()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:n]


def _hex(data: bytes | bytearray | memoryview) -> str:
    return bytes(data).hex()


def tensor_json(name: str, array: npt.NDArray[Any]) -> dict[str, Any]:
    """A tensor as the vectors write it."""
    wire = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "name": name,
        "dtype": str(array.dtype.name),
        "shape": list(array.shape),
        "data_hex": wire.tobytes().hex(),
    }


def _identity(label: str) -> Identity:
    return Identity(ed25519.Ed25519PrivateKey.from_private_bytes(fixed_bytes(label)))


# -- canonical encoding --------------------------------------------------------------------------

_CanonicalEntries = list[tuple[str, str | int | bytes]]


def _typed(entries: _CanonicalEntries) -> list[dict[str, str]]:
    out = []
    for key, value in entries:
        if isinstance(value, str):
            out.append({"key": key, "type": "s", "value": value})
        elif isinstance(value, int):
            out.append({"key": key, "type": "i", "value": str(value)})
        else:
            out.append({"key": key, "type": "b", "value": value.hex()})
    return out


def _canonical() -> dict[str, Any]:
    valid: list[tuple[str, _CanonicalEntries]] = [
        ("empty mapping", []),
        ("one text entry", [("purpose", "sealserve/inference/input")]),
        ("text, integer and bytes", [("text", "hello"), ("n", 42), ("raw", b"\x00\x01\xff")]),
        ("signed 64-bit limits", [("min", -(1 << 63)), ("max", (1 << 63) - 1), ("zero", 0)]),
        ("empty values", [("s", ""), ("b", b"")]),
        (
            "keys sort by UTF-8 bytes, not UTF-16 code units",
            [("\uffff", "U+FFFF"), ("\U00010000", "U+10000"), ("z", "z"), ("\u00e9", "e-acute")],
        ),
        ("non-ASCII text value", [("purpose", "d\u00e9mo \u2603 \U0001f600")]),
    ]
    invalid = [
        ("truncated count", "000000"),
        ("count without entries", "00000001"),
        ("unsorted keys", "00000002" + _entry(b"b", b"s", b"") + _entry(b"a", b"s", b"")),
        ("duplicate keys", "00000002" + _entry(b"a", b"s", b"") + _entry(b"a", b"s", b"")),
        ("trailing byte", "00000000" + "00"),
        ("unknown tag", "00000001" + _entry(b"a", b"x", b"")),
        ("integer of 7 bytes", "00000001" + _entry(b"a", b"i", bytes(7))),
        ("empty key", "00000001" + _entry(b"", b"s", b"")),
        ("key not UTF-8", "00000001" + _entry(b"\xff", b"s", b"")),
        ("text value not UTF-8", "00000001" + _entry(b"a", b"s", b"\xc3")),
        ("value longer than the data", "00000001" + "0001" + "61" + "73" + "00000005" + "6162"),
    ]
    return {
        "description": "The canonical encoding of a mapping (signed messages, envelope "
        "contexts, HKDF info). Decoders accept exactly what encoders produce.",
        "spec": f"{_DOC}#canonical-encoding",
        "valid": [
            {
                "name": name,
                "entries": _typed(entries),
                "encoding_hex": _hex(canonical_encode(dict(entries))),
            }
            for name, entries in valid
        ],
        "invalid": [
            {"name": name, "encoding_hex": data, "error": "ValueError"} for name, data in invalid
        ],
    }


def _entry(key: bytes, tag: bytes, value: bytes) -> str:
    return (struct.pack(">H", len(key)) + key + tag + struct.pack(">I", len(value)) + value).hex()


# -- key derivation ------------------------------------------------------------------------------


def _keys() -> dict[str, Any]:
    hkdf: list[dict[str, Any]] = []
    cases: list[tuple[str, bytes, bytes | None, str, list[tuple[str, str | int]]]] = [
        ("label only, no salt", fixed_bytes("hkdf/ikm-1"), None, "sealserve/test", []),
        (
            "the sealed model's file key",
            fixed_bytes("hkdf/ikm-2"),
            fixed_bytes("hkdf/salt-2", 16),
            "sealserve/model",
            [("model_id", "owner/model"), ("chunk_size", 1 << 20)],
        ),
    ]
    for name, ikm, salt, label, context in cases:
        info = canonical_encode({"label": label, **dict(context)})
        okm = derive_key(ikm, salt=salt, label=label, **dict(context))
        hkdf.append(
            {
                "name": name,
                "ikm_hex": ikm.hex(),
                "salt_hex": None if salt is None else salt.hex(),
                "label": label,
                "context": _typed(list(context)),
                "info_hex": info.hex(),
                "okm_hex": okm.hex(),
            }
        )
    request_keys = []
    for index in (1, 2):
        root = fixed_bytes(f"request-key/{index}")
        key = RequestKey.from_bytes(root)
        request_keys.append(
            {
                "name": f"request key {index}",
                "root_hex": root.hex(),
                "input_info_hex": canonical_encode({"label": "sealserve/request/input"}).hex(),
                "output_info_hex": canonical_encode({"label": "sealserve/request/output"}).hex(),
                "input_key_hex": key.input_key.to_bytes().hex(),
                "output_key_hex": key.output_key.to_bytes().hex(),
            }
        )
    return {
        "description": "HKDF-SHA256 (RFC 5869) to 32 bytes, info = canonical encoding of "
        "{label, **context}, an absent salt being HashLen zero bytes; a request key's input and "
        "output subkeys.",
        "spec": f"{_DOC}#key-derivation",
        "hkdf": hkdf,
        "request_keys": request_keys,
    }


# -- envelopes -----------------------------------------------------------------------------------


def _envelopes() -> dict[str, Any]:
    key = SymmetricKey(fixed_bytes("envelope/key"))
    other = SymmetricKey(fixed_bytes("envelope/other-key"))
    base_context = {"purpose": "sealserve/test", "request_id": "r-0001"}
    cases: list[tuple[str, dict[str, str], bytes]] = [
        ("empty plaintext", {"purpose": "sealserve/test"}, b""),
        ("short plaintext", base_context, b"hello, sealed world"),
        (
            "non-ASCII context, sorted by UTF-8 bytes",
            {"purpose": "sealserve/test", "\uffff": "a", "\U00010000": "b", "\u00e9": "\u2603"},
            bytes(range(64)),
        ),
        ("plaintext over 64 KiB", base_context, bytes(i % 251 for i in range(65_600))),
    ]
    valid: list[dict[str, Any]] = []
    for index, (name, context, plaintext) in enumerate(cases):
        nonce = fixed_bytes(f"envelope/nonce-{index}", 12)
        envelope = seal_with_fixed_nonce_for_test_vectors(
            key, plaintext, context=context, sealed_at=SEALED_AT, nonce=nonce
        )
        aad = _ENVELOPE_LABEL + envelope[:10] + canonical_encode(context)
        valid.append(
            {
                "name": name,
                "key_hex": key.to_bytes().hex(),
                "context": context,
                "sealed_at": SEALED_AT,
                "nonce_hex": nonce.hex(),
                "plaintext_hex": plaintext.hex(),
                "aad_hex": aad.hex(),
                "envelope_hex": envelope.hex(),
            }
        )
    good = bytes.fromhex(valid[1]["envelope_hex"])

    def flip(data: bytes, at: int) -> bytes:
        out = bytearray(data)
        out[at] ^= 0x01
        return bytes(out)

    wrong_context = dict(base_context, request_id="r-0002")
    invalid_cases: list[tuple[str, bytes, SymmetricKey, dict[str, str], dict[str, int]]] = [
        ("tag changed", flip(good, len(good) - 1), key, base_context, {}),
        ("ciphertext changed", flip(good, 22), key, base_context, {}),
        ("timestamp changed", flip(good, 9), key, base_context, {}),
        ("nonce changed", flip(good, 10), key, base_context, {}),
        ("another context", good, key, wrong_context, {}),
        ("another key", good, other, base_context, {}),
        ("version 2", bytes([2]) + good[1:], key, base_context, {}),
        ("suite 2", good[:1] + bytes([2]) + good[2:], key, base_context, {}),
        ("shorter than an empty envelope", good[:37], key, base_context, {}),
        ("tag cut off", good[:-16], key, base_context, {}),
        (
            "older than max_age_s",
            good,
            key,
            base_context,
            {"now": SEALED_AT + 301, "max_age_s": 300},
        ),
        (
            "sealed further in the future than the 60 s skew",
            good,
            key,
            base_context,
            {"now": SEALED_AT - 61, "max_age_s": 300},
        ),
    ]
    invalid = [
        {
            "name": name,
            "key_hex": k.to_bytes().hex(),
            "context": ctx,
            "envelope_hex": data.hex(),
            **extra,
            "error": "InvalidEnvelope",
        }
        for name, data, k, ctx, extra in invalid_cases
    ]
    return {
        "description": "Envelopes: AES-256-GCM, header version|suite|sealed_at, a 12-byte "
        "nonce, the context bound as associated data. max_age_s and now, where given, are "
        "the age check's limit and the opener's clock.",
        "spec": f"{_DOC}#envelope",
        "valid": valid,
        "invalid": invalid,
    }


# -- the tensor container ------------------------------------------------------------------------


def _tensor_sets() -> list[tuple[str, dict[str, npt.NDArray[Any]]]]:
    every = {
        "u8": np.array([0, 1, 255], dtype=np.uint8),
        "i8": np.array([[-128, -1], [0, 127]], dtype=np.int8),
        "u16": np.array([0, 65535], dtype=np.uint16),
        "i16": np.array([-32768, 32767], dtype=np.int16),
        "i32": np.array([-(1 << 31), (1 << 31) - 1], dtype=np.int32),
        "i64": np.array([-(1 << 63), (1 << 63) - 1, 1], dtype=np.int64),
        "u32": np.array([0, (1 << 32) - 1], dtype=np.uint32),
        "u64": np.array([0, (1 << 64) - 1], dtype=np.uint64),
        "f16": np.array([0.5, -2.0, np.inf], dtype=np.float16),
        "f32": np.array(3.25, dtype=np.float32),
        "f64": np.array([1e-300, -0.0], dtype=np.float64),
        "flag": np.array([True, False, True, True], dtype=np.bool_),
    }
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 2204, 102, 0, 0]], dtype=np.int64)
    return [
        ("no tensors", {}),
        ("an image batch", {"input": (np.arange(48, dtype=np.float32) / 8).reshape(1, 3, 4, 4)}),
        (
            "token ids",
            {
                "input_ids": ids,
                "attention_mask": (ids != 0).astype(np.int64),
                "token_type_ids": np.zeros_like(ids),
            },
        ),
        ("every dtype", every),
        (
            "a zero-size tensor between others",
            {
                "a": np.array([1], dtype=np.int32),
                "empty": np.zeros((0, 3), dtype=np.float32),
                "b": np.array([2], dtype=np.int32),
            },
        ),
        ("a non-ASCII name", {"\u00e9cho:0": np.array([1, 2], dtype=np.int32)}),
    ]


def _tensors() -> dict[str, Any]:
    valid = [
        {
            "name": name,
            "tensors": [tensor_json(n, a) for n, a in tensors.items()],
            "encoding_hex": encode_tensors(tensors).hex(),
        }
        for name, tensors in _tensor_sets()
    ]
    one = encode_tensors({"x": np.array([1.0, 2.0], dtype=np.float32)})  # data at 64
    flag = encode_tensors({"f": np.array([True, False], dtype=np.bool_)})
    two = encode_tensors({"x": np.array([1], np.int32), "y": np.array([2], np.int32)})

    def put(data: bytes, at: int, raw: bytes) -> bytes:
        return data[:at] + raw + data[at + len(raw) :]

    desc_two = bytearray(two)
    desc_two[8 + 13 + 4 + 8] = ord("x")  # the second descriptor's name: "y" -> "x"
    name_at = 8 + 4 + 8  # after header, name_len|dtype|rank and one dim
    invalid = [
        ("shorter than the header", one[:7]),
        ("bad magic", put(one, 0, b"SSTX")),
        ("version 2", put(one, 4, b"\x02")),
        ("reserved byte set", put(one, 5, b"\x01")),
        ("more tensors than the limit", put(one, 6, struct.pack("<H", 257))),
        ("descriptor cut off", one[:10]),
        ("unknown dtype code", put(one, 10, b"\x08")),
        ("rank over the limit", put(one, 11, b"\x09")),
        ("empty name", put(one, 8, b"\x00\x00")),
        ("name not UTF-8", put(one, name_at, b"\xff")),
        ("control character in a name", put(one, name_at, b"\x0a")),
        ("duplicate name", bytes(desc_two)),
        ("padding not zero", put(one, name_at + 1, b"\x01")),
        ("data cut off", one[:-1]),
        ("a byte after the last tensor", one + b"\x00"),
        ("bool byte other than 0 or 1", flag[:-1] + b"\x02"),
        ("dimension over the element limit", put(one, 12, struct.pack("<Q", (1 << 31) + 1))),
    ]
    return {
        "description": "SSTN, the tensor container inside every inference envelope. A valid "
        "buffer is the one encoding of its tensors: decode(encode(t)) == t and "
        "encode(decode(b)) == b.",
        "spec": f"{_DOC}#tensor-container",
        "valid": valid,
        "invalid": [
            {"name": name, "encoding_hex": data.hex(), "error": "TensorFormatError"}
            for name, data in invalid
        ],
    }


# -- a whole inference ---------------------------------------------------------------------------


def _inference() -> dict[str, Any]:
    owner = _identity("identity/owner")
    user = _identity("identity/user")
    other_user = _identity("identity/other-user")
    rng = np.random.default_rng(17)
    cases: list[tuple[str, str, str, dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]] = [
        (
            "an image classifier",
            "mobilenet-v2",
            "req-0001",
            {"input": rng.standard_normal((1, 3, 4, 4), dtype=np.float32)},
            {"logits": rng.standard_normal((1, 10), dtype=np.float32)},
        ),
        (
            "a sentence encoder",
            "minilm-int8",
            "6f9c1e0a2b3d4c5e6f708192a3b4c5d6",
            {
                "input_ids": np.array([[101, 7592, 102]], dtype=np.int64),
                "attention_mask": np.ones((1, 3), dtype=np.int64),
                "token_type_ids": np.zeros((1, 3), dtype=np.int64),
            },
            {"last_hidden_state": rng.standard_normal((1, 3, 4), dtype=np.float32)},
        ),
    ]
    valid: list[dict[str, Any]] = []
    for index, (name, model, request_id, inputs, outputs) in enumerate(cases):
        root = fixed_bytes(f"inference/request-key-{index}")
        key = RequestKey.from_bytes(root)
        ids = {
            "model_id": f"{owner.principal_id}/{model}",
            "user_id": user.principal_id,
            "request_id": request_id,
        }
        sides: dict[str, Any] = {}
        for side, tensors, subkey, context in (
            ("input", inputs, key.input_key, input_context(**ids)),
            ("output", outputs, key.output_key, output_context(**ids)),
        ):
            plain = encode_tensors(tensors)
            nonce = fixed_bytes(f"inference/{index}/{side}-nonce", 12)
            sealed = seal_with_fixed_nonce_for_test_vectors(
                subkey, plain, context=context, sealed_at=SEALED_AT, nonce=nonce
            )
            sides[side] = {
                "tensors": [tensor_json(n, a) for n, a in tensors.items()],
                "context": context,
                "plaintext_hex": plain.hex(),
                "nonce_hex": nonce.hex(),
                "envelope_hex": sealed.hex(),
            }
        valid.append(
            {"name": name, "request_key_hex": root.hex(), **ids, "sealed_at": SEALED_AT, **sides}
        )
    first = valid[0]
    key = RequestKey.from_bytes(bytes.fromhex(first["request_key_hex"]))
    ids = {k: first[k] for k in ("model_id", "user_id", "request_id")}
    as_input_key = seal_with_fixed_nonce_for_test_vectors(
        key.input_key,
        bytes.fromhex(first["output"]["plaintext_hex"]),
        context=output_context(**ids),
        sealed_at=SEALED_AT,
        nonce=fixed_bytes("inference/wrong-subkey-nonce", 12),
    )
    invalid_cases = [
        ("the sealed input presented as the output", first["input"]["envelope_hex"], ids),
        ("the output of another request", first["output"]["envelope_hex"],
         dict(ids, request_id="req-0002")),
        ("the output for another user", first["output"]["envelope_hex"],
         dict(ids, user_id=other_user.principal_id)),
        ("the output for another model", first["output"]["envelope_hex"],
         dict(ids, model_id=f"{owner.principal_id}/resnet-50")),
        ("an output sealed under the input subkey", as_input_key.hex(), ids),
    ]  # fmt: skip
    invalid = [
        {
            "name": name,
            "request_key_hex": first["request_key_hex"],
            **opener,
            "direction": "output",
            "envelope_hex": data,
            "error": "InvalidEnvelope",
        }
        for name, data, opener in invalid_cases
    ]
    return {
        "description": "One inference each: the SSTN plaintexts and the envelopes of its "
        "input (request key's input subkey, input context) and output (output subkey, output "
        "context). Invalid: outputs a client must refuse with the ids given.",
        "spec": f"{_DOC}#inference-envelopes",
        "valid": valid,
        "invalid": invalid,
    }


# -- signed requests -----------------------------------------------------------------------------


def _signed_requests() -> dict[str, Any]:
    owner = _identity("identity/owner")
    user = _identity("identity/user")
    model = f"/v1/models/{owner.principal_id}/mobilenet-v2"
    body = json.dumps({"wrapped_key": "AAEC", "policy": {}}, separators=(",", ":")).encode()
    cases: list[tuple[str, Identity, str, str, str, bytes, int]] = [
        ("a user stores a request key", user, "user", "PUT",
         f"{model}/request-keys/{user.principal_id}", body, 0),
        ("an owner reads a model, no body", owner, "owner", "GET", model, b"", 1),
        ("a query string is signed as sent", owner, "owner", "GET",
         "/v1/attestation?nonce=AAECAwQFBgcICQoLDA0ODw", b"", 2),
        ("a revocation", owner, "owner", "DELETE",
         f"{model}/grants/{user.principal_id}", b"", 3),
    ]  # fmt: skip
    valid: list[dict[str, Any]] = []
    for name, identity, who, method, path, payload, index in cases:
        timestamp = SEALED_AT + index
        nonce = fixed_bytes(f"signed/{index}", 16).hex()
        headers = sign_request_with_fixed_nonce_for_test_vectors(
            identity, method=method, path=path, body=payload, timestamp=timestamp, nonce=nonce
        )
        message = canonical_encode(
            {
                "label": "sealserve/request",
                "principal": identity.principal_id,
                "method": method,
                "path": path,
                "body_sha256": hashlib.sha256(payload).digest(),
                "timestamp": timestamp,
                "nonce": nonce,
            }
        )
        valid.append(
            {
                "name": name,
                "seed_hex": fixed_bytes(f"identity/{who}").hex(),
                "public_key_hex": identity.public_key_bytes.hex(),
                "principal_id": identity.principal_id,
                "method": method,
                "path": path,
                "body_hex": payload.hex(),
                "timestamp": timestamp,
                "nonce": nonce,
                "message_hex": message.hex(),
                "signature_hex": base64.urlsafe_b64decode(headers["x-sealserve-signature"]).hex(),
                "headers": headers,
            }
        )
    first = valid[0]
    stranger = _identity("identity/stranger")
    forged = sign_request_with_fixed_nonce_for_test_vectors(
        stranger,
        method=first["method"],
        path=first["path"],
        body=bytes.fromhex(first["body_hex"]),
        timestamp=first["timestamp"],
        nonce=first["nonce"],
    )
    head = first["headers"]

    def changed(**fields: Any) -> dict[str, Any]:
        out = {k: first[k] for k in ("public_key_hex", "method", "path", "body_hex")}
        out["headers"] = dict(head)
        out["now"] = first["timestamp"]
        out.update({k: v for k, v in fields.items() if k != "header_changes"})
        out["headers"].update(fields.get("header_changes", {}))
        return out

    invalid_cases = [
        ("body changed", changed(body_hex=(b"{}").hex())),
        ("path changed", changed(path=first["path"] + "x")),
        ("method changed", changed(method="POST")),
        ("timestamp header changed",
         changed(header_changes={"x-sealserve-timestamp": str(first["timestamp"] + 1)})),
        ("nonce header changed", changed(header_changes={"x-sealserve-nonce": "0" * 32})),
        ("signed by another key",
         changed(header_changes={"x-sealserve-signature": forged["x-sealserve-signature"]})),
        ("principal header names another key",
         changed(header_changes={"x-sealserve-principal": stranger.principal_id})),
        ("older than the replay window", changed(now=first["timestamp"] + 301)),
        ("nonce in upper case", changed(header_changes={"x-sealserve-nonce": head[
            "x-sealserve-nonce"].upper()})),
        ("signature not base64url", changed(header_changes={"x-sealserve-signature": "!!!!"})),
    ]  # fmt: skip
    invalid = [
        {"name": name, **fields, "replay_window_s": 300, "error": "InvalidSignature"}
        for name, fields in invalid_cases
    ]
    return {
        "description": "Signed requests (KeyService API): Ed25519 over the canonical encoding "
        "of label, principal, method, path, body_sha256, timestamp and nonce; seed_hex is the "
        "RFC 8032 private key. Invalid: what a verifier whose clock reads now must refuse.",
        "spec": f"{_DOC}#signed-requests",
        "valid": valid,
        "invalid": invalid,
    }


#: Each vector file and the function that makes it.
FILES: Final[Mapping[str, Callable[[], dict[str, Any]]]] = {
    "canonical.json": _canonical,
    "keys.json": _keys,
    "envelopes.json": _envelopes,
    "tensors.json": _tensors,
    "inference.json": _inference,
    "signed_requests.json": _signed_requests,
}


def generate() -> dict[str, str]:
    """Every vector file's name and text (deterministic: the same bytes on every run)."""
    return {
        name: json.dumps(make(), indent=1, ensure_ascii=True) + "\n" for name, make in FILES.items()
    }


def write(folder: Path) -> list[Path]:
    """Write every vector file into ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = folder / name
        path.write_text(text, encoding="ascii")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sealserve.protocol._vectors",
        description="Write (or check) the wire's known-answer vectors.",
    )
    parser.add_argument("--out", type=Path, default=Path("tests/vectors"), help="the folder")
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when a file differs"
    )
    args = parser.parse_args(argv)
    if not args.check:
        for path in write(args.out):
            print(path)
        return 0
    stale = [
        name
        for name, text in generate().items()
        if not (args.out / name).is_file() or (args.out / name).read_text("ascii") != text
    ]
    for name in stale:
        print(f"{args.out / name} differs from what the generator makes", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
