"""Envelopes and wrapped keys: round trips, and every tampering is the same InvalidEnvelope."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealserve.crypto import (
    HpkeKeyPair,
    SymmetricKey,
    canonical_decode,
    canonical_encode,
    seal,
    unseal,
    unwrap,
    wrap,
)
from sealserve.errors import InvalidEnvelope

KEY = SymmetricKey.generate()
OTHER_KEY = SymmetricKey.generate()
PAIR = HpkeKeyPair.generate()

names = st.text(min_size=1, max_size=12)
contexts = st.dictionaries(names, st.text(max_size=16), max_size=4).map(
    lambda d: {**d, "purpose": d.get("purpose") or "p"}
)
plaintexts = st.binary(max_size=300)
SETTINGS = settings(deadline=None, max_examples=150)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@SETTINGS
@given(plaintext=plaintexts, context=contexts)
def test_round_trip(plaintext: bytes, context: dict[str, str]) -> None:
    assert unseal(KEY, seal(KEY, plaintext, context=context), context=context) == plaintext


@SETTINGS
@given(plaintext=plaintexts, context=contexts, data=st.data())
def test_any_single_flipped_bit_is_rejected(
    plaintext: bytes, context: dict[str, str], data: st.DataObject
) -> None:
    envelope = seal(KEY, plaintext, context=context)
    bit = data.draw(st.integers(0, len(envelope) * 8 - 1), label="bit")
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal(KEY, _flip(envelope, bit), context=context)


@SETTINGS
@given(plaintext=plaintexts, context=contexts, data=st.data())
def test_any_truncation_or_extension_is_rejected(
    plaintext: bytes, context: dict[str, str], data: st.DataObject
) -> None:
    envelope = seal(KEY, plaintext, context=context)
    cut = data.draw(st.integers(0, len(envelope) - 1), label="cut")
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal(KEY, envelope[:cut], context=context)
    tail = data.draw(st.binary(min_size=1, max_size=40), label="tail")
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal(KEY, envelope + tail, context=context)


@SETTINGS
@given(plaintext=plaintexts, context=contexts, other=contexts)
def test_wrong_key_or_context_is_rejected(
    plaintext: bytes, context: dict[str, str], other: dict[str, str]
) -> None:
    envelope = seal(KEY, plaintext, context=context)
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal(OTHER_KEY, envelope, context=context)
    if other != context:
        with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
            unseal(KEY, envelope, context=other)


@settings(deadline=None, max_examples=60)
@given(secret=st.binary(max_size=64), info=contexts, data=st.data())
def test_wrapped_keys_reject_any_flipped_bit(
    secret: bytes, info: dict[str, str], data: st.DataObject
) -> None:
    wrapped = wrap(PAIR.public_key_bytes(), secret, info=info)
    assert unwrap(PAIR, wrapped, info=info) == secret
    bit = data.draw(st.integers(0, len(wrapped) * 8 - 1), label="bit")
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unwrap(PAIR, _flip(wrapped, bit), info=info)


values = st.one_of(
    st.text(max_size=20), st.integers(-(1 << 63), (1 << 63) - 1), st.binary(max_size=20)
)


@SETTINGS
@given(mapping=st.dictionaries(names, values, max_size=6))
def test_canonical_encoding_round_trips_and_is_injective(
    mapping: dict[str, str | int | bytes],
) -> None:
    encoded = canonical_encode(mapping)
    assert canonical_decode(encoded) == mapping
    assert canonical_encode(canonical_decode(encoded)) == encoded


@SETTINGS
@given(context=contexts)
def test_the_envelope_context_encoding_is_the_canonical_encoding(context: dict[str, str]) -> None:
    from sealserve.crypto._envelope import _encode_context

    assert _encode_context(context) == canonical_encode(context)
