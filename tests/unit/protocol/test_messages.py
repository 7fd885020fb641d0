"""Typed bodies: one declaration gives the strict parser, the canonical bytes and the schema."""

from __future__ import annotations

import json

import pytest

from sealserve.protocol import (
    ModelInfo,
    ModelKeyIn,
    ModelKeyReceipt,
    ReleaseIn,
    ReleasePair,
    wire,
)

OWNER, USER = "ab" * 32, "cd" * 32
PAIR = {"user_id": USER, "model_id": f"{OWNER}/m"}
RELEASE = {"nonce": "AAAA", "evidence": "BBBB", "runtime_public_key": "CCCC", "pairs": [PAIR]}


def test_a_body_round_trips_through_its_canonical_json() -> None:
    parsed = ReleaseIn.from_dict(RELEASE)
    assert parsed.pairs == (ReleasePair(user_id=USER, model_id=f"{OWNER}/m"),)
    assert parsed.to_json() == wire.canonical_json(RELEASE)
    assert ReleaseIn.from_json(parsed.to_json()) == parsed
    info = ModelInfo(model_id=f"{OWNER}/m", owner_id=OWNER, key_version=2, grants=(USER,))
    assert json.loads(info.to_json())["grants"] == [USER]
    assert ModelInfo.from_json(info.to_json()) == info


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({**RELEASE, "extra": 1}, "extra: unknown field"),
        ({k: v for k, v in RELEASE.items() if k != "nonce"}, "nonce: field required"),
        ({**RELEASE, "nonce": "not base64!"}, "nonce: must be unpadded base64url"),
        ({**RELEASE, "nonce": "AR"}, "nonce: must be unpadded base64url"),
        ({**RELEASE, "nonce": 7}, "nonce: must be a string"),
        ({**RELEASE, "pairs": []}, "pairs: must have at least 1 items"),
        ({**RELEASE, "pairs": [PAIR] * 33}, "pairs: must have at most 32 items"),
        ({**RELEASE, "pairs": [{**PAIR, "user_id": USER + "\n"}]}, "pairs.0.user_id: must match"),
        ({**RELEASE, "pairs": [{**PAIR, "x": 1}]}, "pairs.0.x: unknown field"),
        ({**RELEASE, "pairs": "all"}, "pairs: must be an array"),
    ],
)
def test_a_request_body_is_parsed_strictly(doc: dict[str, object], where: str) -> None:
    with pytest.raises(ValueError, match=where.replace(".", r"\.")):
        ReleaseIn.from_dict(doc)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("2", "must be an integer"),
        (True, "must be an integer"),
        (2.0, "must be an integer"),
        (0, "must be >= 1"),
        (2**31, "must be <= 2147483647"),
    ],
)
def test_numbers_are_not_coerced(version: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"version: {message}"):
        ModelKeyIn.from_dict({"version": version, "wrapped_key": "AA"})


def test_an_answer_ignores_fields_it_does_not_know_but_not_wrong_ones() -> None:
    doc = {"model_id": f"{OWNER}/m", "version": 1, "revocation_epoch": 3, "new": "field"}
    assert ModelKeyReceipt.from_dict(doc).revocation_epoch == 3
    with pytest.raises(ValueError, match="revocation_epoch: must be an integer"):
        ModelKeyReceipt.from_dict({**doc, "revocation_epoch": "3"})
    for body in (b"", b"[]", b"{", b"null"):
        with pytest.raises(ValueError, match="body"):
            ModelKeyReceipt.from_json(body)


def test_the_schema_says_what_the_parser_checks() -> None:
    schema, nested = ReleaseIn.json_schema()
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["nonce", "evidence", "runtime_public_key", "pairs"]
    pairs = schema["properties"]["pairs"]
    assert pairs == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/ReleasePair"},
        "minItems": 1,
        "maxItems": 32,
    }
    assert set(nested) == {"ReleasePair"}
    assert nested["ReleasePair"]["properties"]["user_id"]["pattern"] == "^[0-9a-f]{64}$"
    answer, _ = ModelKeyReceipt.json_schema()
    assert "additionalProperties" not in answer
