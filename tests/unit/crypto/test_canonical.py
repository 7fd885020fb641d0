from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sealserve.crypto import CanonicalValue, canonical_decode, canonical_encode

VECTORS = json.loads((Path(__file__).parent / "vectors" / "crypto_v1.json").read_text())


def _typed(mapping: dict[str, dict[str, Any]]) -> dict[str, CanonicalValue]:
    out: dict[str, CanonicalValue] = {}
    for key, spec in mapping.items():
        ((tag, value),) = spec.items()
        out[key] = bytes.fromhex(value) if tag == "b" else value
    return out


def test_layout_matches_the_documented_format() -> None:
    # count=1 | key_len=1 'a' | tag 's' | value_len=1 'b'
    assert canonical_encode({"a": "b"}) == bytes.fromhex("00000001000161730000000162")
    assert canonical_encode({}) == bytes(4)
    assert canonical_encode({"i": 1})[-13:] == b"i" + bytes.fromhex("00000008") + (1).to_bytes(8)


@pytest.mark.parametrize("case", VECTORS["canonical"], ids=lambda c: c["hex"][:24])
def test_known_answers(case: dict[str, Any]) -> None:
    mapping = _typed(case["mapping"])
    assert canonical_encode(mapping).hex() == case["hex"]
    assert canonical_decode(bytes.fromhex(case["hex"])) == mapping


def test_order_of_insertion_does_not_matter() -> None:
    assert canonical_encode({"b": "1", "a": "2"}) == canonical_encode({"a": "2", "b": "1"})


def test_types_are_distinguished() -> None:
    encodings = {canonical_encode({"k": v}) for v in ("1", 1, b"1")}
    assert len(encodings) == 3


def test_no_two_splits_collide() -> None:
    assert canonical_encode({"ab": "c"}) != canonical_encode({"a": "bc"})
    assert canonical_encode({"a": "b", "c": "d"}) != canonical_encode({"a": "b\x00c"})


@pytest.mark.parametrize(
    ("mapping", "error", "match"),
    [
        ({"": "x"}, ValueError, "1 to 1024"),
        ({"k" * 1025: "x"}, ValueError, "1 to 1024"),
        ({"k": True}, TypeError, "bool"),
        ({"k": 1.5}, TypeError, "float"),
        ({"k": 1 << 63}, ValueError, "64 bits"),
        ({"k": "\ud800"}, ValueError, "Unicode"),
        ({1: "x"}, TypeError, "keys must be str"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(
    mapping: dict[Any, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        canonical_encode(mapping)


def test_not_a_mapping() -> None:
    with pytest.raises(TypeError, match="Mapping"):
        canonical_encode([("a", "b")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (canonical_encode({"a": "b"}) + b"\x00", "trailing"),
        (canonical_encode({"a": "b"})[:-1], "truncated"),
        # two entries, keys out of order
        (bytes.fromhex("0000000200016273000000000001617300000000"), "unsorted"),
        (bytes.fromhex("000000010001617800000000"), "unknown tag"),
        (bytes.fromhex("00000001000161690000000100"), "8 bytes"),
        (bytes.fromhex("000000010001ff7300000000"), "UTF-8"),
    ],
)
def test_decode_refuses_anything_encode_would_not_produce(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        canonical_decode(data)
