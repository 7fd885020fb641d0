"""Ids match as a whole: nothing after them, not even a newline (issue 10's finding)."""

from __future__ import annotations

import re

import pytest

from sealserve.protocol import (
    MODEL_NAME_PATTERN,
    PRINCIPAL_ID_PATTERN,
    check_principal_id,
    check_request_id,
    join_model_id,
    new_request_id,
    split_model_id,
    wire,
)

OWNER = "ab" * 32


def test_good_ids_pass_and_round_trip() -> None:
    assert check_principal_id(OWNER) == OWNER
    model_id = join_model_id(OWNER, "resnet-50.v2")
    assert model_id == f"{OWNER}/resnet-50.v2"
    assert split_model_id(model_id) == (OWNER, "resnet-50.v2")
    rid = new_request_id()
    assert check_request_id(rid) == rid
    assert check_request_id("a" * 128) == "a" * 128


@pytest.mark.parametrize("tail", ["\n", "\r\n", " ", "\x00", "/x"])
def test_a_trailing_character_is_refused_everywhere(tail: str) -> None:
    with pytest.raises(ValueError, match="principal_id"):
        check_principal_id(OWNER + tail)
    with pytest.raises(ValueError, match="owner_id"):
        join_model_id(OWNER + tail, "m")
    with pytest.raises(ValueError, match="model name"):
        join_model_id(OWNER, "m" + tail)
    with pytest.raises(ValueError, match="model"):
        split_model_id(f"{OWNER}/m{tail}")
    with pytest.raises(ValueError, match="request_id"):
        check_request_id("r-1" + tail)


@pytest.mark.parametrize(
    "bad", ["", "AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, f"{OWNER}\n", f"\n{OWNER}"]
)
def test_principal_ids_are_64_lowercase_hex_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        check_principal_id(bad)


@pytest.mark.parametrize("bad", ["", "-m", ".m", "a/b", "m" * 129, "é", "m\n"])
def test_model_names(bad: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        join_model_id(OWNER, bad)


def test_schema_patterns_are_anchored_and_agree_with_the_checks() -> None:
    for pattern in (PRINCIPAL_ID_PATTERN, MODEL_NAME_PATTERN):
        assert pattern[0] + pattern[-1] == "^$"
    # What a JSON Schema (ECMAScript) engine accepts: '$' is the very end, as in \Z.
    ecma_principal = re.compile(PRINCIPAL_ID_PATTERN[:-1] + r"\Z")
    assert ecma_principal.match(OWNER)
    assert not ecma_principal.match(OWNER + "\n")


def test_base64url_refuses_a_trailing_newline() -> None:
    assert wire.b64decode(wire.b64encode(b"\x01\x02\x03")) == b"\x01\x02\x03"
    with pytest.raises(ValueError, match="nonce is not base64url"):
        wire.b64decode(wire.b64encode(b"\x01\x02\x03") + "\n", name="nonce")


def test_base64url_accepts_only_the_canonical_encoding() -> None:
    # 'AQ' is b"\x01"; 'AR' has a set unused bit in its last character: the same byte.
    assert wire.b64decode("AQ") == b"\x01"
    with pytest.raises(ValueError, match="canonical"):
        wire.b64decode("AR")
    assert wire.b64decode("AQ==") == b"\x01"  # padding is still accepted
