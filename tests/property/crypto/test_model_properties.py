"""Sealed models: every flipped bit, truncation, reordering, duplication or extension of the
chunk stream, and every wrong key or model id, is the same InvalidEnvelope."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealserve.crypto import SymmetricKey, seal_model, unseal_model, unseal_model_stream
from sealserve.errors import InvalidEnvelope

KEY = SymmetricKey.generate()
CHUNK = 64
HEADER = 44
SEGMENT = CHUNK + 16
SETTINGS = settings(deadline=None, max_examples=150)
models = st.binary(max_size=CHUNK * 5 + 7)


def _seal(data: bytes, model_id: str = "m") -> bytes:
    dst = io.BytesIO()
    seal_model(KEY, io.BytesIO(data), dst, model_id=model_id, version=1, chunk_size=CHUNK)
    return dst.getvalue()


def _split(sealed: bytes) -> tuple[bytes, list[bytes]]:
    body = sealed[HEADER:]
    return sealed[:HEADER], [body[i : i + SEGMENT] for i in range(0, len(body), SEGMENT)]


def _rejected(sealed: bytes, model_id: str = "m", key: SymmetricKey = KEY) -> None:
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal_model(key, sealed, model_id=model_id, version=1)
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal_model_stream(key, io.BytesIO(sealed), model_id=model_id, version=1)


@SETTINGS
@given(data=models)
def test_round_trip(data: bytes) -> None:
    sealed = _seal(data)
    assert unseal_model(KEY, sealed, model_id="m", version=1) == data
    assert unseal_model_stream(KEY, io.BytesIO(sealed), model_id="m", version=1) == data


@SETTINGS
@given(data=models, draw=st.data())
def test_any_single_flipped_bit_of_header_or_any_chunk(data: bytes, draw: st.DataObject) -> None:
    sealed = bytearray(_seal(data))
    bit = draw.draw(st.integers(0, len(sealed) * 8 - 1), label="bit")
    sealed[bit // 8] ^= 1 << (bit % 8)
    _rejected(bytes(sealed))


@SETTINGS
@given(data=models, draw=st.data())
def test_any_truncation(data: bytes, draw: st.DataObject) -> None:
    sealed = _seal(data)
    _rejected(sealed[: draw.draw(st.integers(0, len(sealed) - 1), label="cut")])


@SETTINGS
@given(data=models, tail=st.binary(min_size=1, max_size=SEGMENT * 2))
def test_any_extension(data: bytes, tail: bytes) -> None:
    _rejected(_seal(data) + tail)


@SETTINGS
@given(data=st.binary(min_size=CHUNK + 1, max_size=CHUNK * 5 + 7), draw=st.data())
def test_any_reordering_of_chunks(data: bytes, draw: st.DataObject) -> None:
    header, chunks = _split(_seal(data))
    order = draw.draw(st.permutations(range(len(chunks))), label="order")
    if order == list(range(len(chunks))):
        return
    _rejected(header + b"".join(chunks[i] for i in order))


@SETTINGS
@given(data=st.binary(max_size=CHUNK * 5 + 7), draw=st.data())
def test_any_duplicated_or_dropped_chunk(data: bytes, draw: st.DataObject) -> None:
    header, chunks = _split(_seal(data))
    which = draw.draw(st.integers(0, len(chunks) - 1), label="which")
    where = draw.draw(st.integers(0, len(chunks)), label="where")
    duplicated = [*chunks[:where], chunks[which], *chunks[where:]]
    _rejected(header + b"".join(duplicated))
    dropped = chunks[:which] + chunks[which + 1 :]
    _rejected(header + b"".join(dropped))


@SETTINGS
@given(data=models, model_id=st.text(min_size=1, max_size=10))
def test_wrong_key_or_model_id(data: bytes, model_id: str) -> None:
    sealed = _seal(data)
    _rejected(sealed, key=SymmetricKey.generate())
    if model_id != "m":
        _rejected(sealed, model_id=model_id)
