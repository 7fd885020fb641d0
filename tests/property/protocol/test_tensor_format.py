"""The tensor wire format under hypothesis: round trips, one encoding per value, and every
truncated, extended or corrupted buffer either is refused with TensorFormatError or decodes
to tensors whose encoding is exactly that buffer (never another exception, never a crash)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sealserve.errors import TensorFormatError
from sealserve.protocol import decode_tensors, encode_tensors, encoded_size

SETTINGS = settings(deadline=None, max_examples=150)

dtypes = st.sampled_from(
    ["<f4", "<f2", "<f8", "i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "?", ">f4", ">i8"]
)
arrays = dtypes.flatmap(
    lambda dt: hnp.arrays(
        np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
    )
)
names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
tensor_maps = st.dictionaries(names, arrays, max_size=5)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype.newbyteorder("<")
        and a.tobytes() == (b.astype(b.dtype.newbyteorder("<")).tobytes())
    )


@SETTINGS
@given(tensors=tensor_maps, copy=st.booleans())
def test_round_trip(tensors: dict[str, np.ndarray], copy: bool) -> None:
    data = encode_tensors(tensors)
    assert len(data) == encoded_size(tensors)
    out = decode_tensors(data, copy=copy)
    assert list(out) == list(tensors)
    for name, array in tensors.items():
        assert _same(out[name], array)  # bit for bit, NaN payloads included
    assert encode_tensors(out) == data


def _decodes_canonically_or_refuses(data: bytes) -> None:
    try:
        out = decode_tensors(data)
    except TensorFormatError:
        return
    assert encode_tensors(out) == data


@SETTINGS
@given(tensors=tensor_maps, data=st.data())
def test_truncation_is_refused(tensors: dict[str, np.ndarray], data: st.DataObject) -> None:
    encoded = encode_tensors(tensors)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    try:
        decode_tensors(encoded[:cut])
    except TensorFormatError:
        return
    raise AssertionError(f"a buffer cut to {cut} of {len(encoded)} bytes decoded")


@SETTINGS
@given(tensors=tensor_maps, extra=st.binary(min_size=1, max_size=80))
def test_extension_is_refused(tensors: dict[str, np.ndarray], extra: bytes) -> None:
    encoded = encode_tensors(tensors)
    try:
        decode_tensors(encoded + extra)
    except TensorFormatError:
        return
    raise AssertionError("a buffer with bytes appended decoded")


@SETTINGS
@given(tensors=tensor_maps, data=st.data())
def test_corruption_never_crashes(tensors: dict[str, np.ndarray], data: st.DataObject) -> None:
    encoded = bytearray(encode_tensors(tensors))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    _decodes_canonically_or_refuses(bytes(encoded))


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(blob: bytes) -> None:
    _decodes_canonically_or_refuses(b"SSTN\x01\x00" + blob)
    _decodes_canonically_or_refuses(blob)
