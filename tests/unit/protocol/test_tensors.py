"""The tensor wire format: round trips, zero copy, limits, and strict rejection."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sealserve.errors import TensorFormatError
from sealserve.protocol import (
    TensorLimits,
    decode_tensors,
    encode_tensors,
    encode_tensors_into,
    encoded_size,
)

ALL_DTYPES = [
    np.float32,
    np.float16,
    np.float64,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.bool_,
]


def _sample(dtype: type, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype is np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    return (rng.standard_normal(shape) * 100).astype(dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_every_dtype(dtype: type) -> None:
    tensors = {
        "x": _sample(dtype, (3, 5)),
        "scalar": _sample(dtype, ()),
        "empty": _sample(dtype, (0, 4)),
    }
    data = encode_tensors(tensors)
    out = decode_tensors(data)
    assert list(out) == ["x", "scalar", "empty"]
    for name, array in tensors.items():
        assert out[name].dtype == array.dtype
        assert out[name].shape == array.shape
        np.testing.assert_array_equal(out[name], array)


def test_numpy_scalars_are_rank_zero_tensors() -> None:
    out = decode_tensors(encode_tensors({"s": np.float32(1.5), "i": np.int64(-3)}))
    assert out["s"].shape == ()
    assert out["s"].dtype == np.float32
    assert out["s"] == 1.5
    assert out["i"].shape == ()
    assert out["i"] == -3


def test_layout_is_aligned_and_canonical() -> None:
    tensors = {"a": np.arange(3, dtype=np.int8), "b": np.ones((2, 2), np.float32)}
    data = encode_tensors(tensors)
    assert data[:4] == b"SSTN"
    assert len(data) == encoded_size(tensors)
    views = decode_tensors(data, copy=False)
    base = np.frombuffer(data, np.uint8).ctypes.data
    for view in views.values():
        assert (view.ctypes.data - base) % 64 == 0
    assert encode_tensors(decode_tensors(data)) == data


def test_non_contiguous_and_big_endian_inputs_are_normalised() -> None:
    strided = np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2]
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    out = decode_tensors(encode_tensors({"s": strided, "b": big}))
    np.testing.assert_array_equal(out["s"], strided)
    np.testing.assert_array_equal(out["b"], big)
    assert out["b"].dtype == np.dtype("<i4")
    assert encode_tensors({"b": big}) == encode_tensors({"b": big.astype("<i4")})


def test_zero_copy_views_share_the_buffer() -> None:
    buffer = bytearray(encode_tensors({"x": np.arange(16, dtype=np.float32)}))
    view = decode_tensors(memoryview(buffer), copy=False)["x"]
    copied = decode_tensors(memoryview(buffer))["x"]
    assert np.shares_memory(view, np.frombuffer(buffer, np.uint8))
    assert not np.shares_memory(copied, np.frombuffer(buffer, np.uint8))
    view[0] = 42.0
    assert decode_tensors(buffer)["x"][0] == 42.0
    assert copied[0] == 0.0


def test_views_over_bytes_are_read_only() -> None:
    view = decode_tensors(encode_tensors({"x": np.zeros(4, np.int64) + 7}), copy=False)["x"]
    assert not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1


def test_encode_into_writes_every_byte_of_a_dirty_buffer() -> None:
    tensors = {"a": np.arange(5, dtype=np.int16), "b": np.full((3,), 2.5, np.float32)}
    expected = encode_tensors(tensors)
    out = bytearray(b"\xff" * (len(expected) + 10))
    written = encode_tensors_into(tensors, out)
    assert written == len(expected)
    assert bytes(out[:written]) == expected
    with pytest.raises(ValueError, match="needs"):
        encode_tensors_into(tensors, bytearray(len(expected) - 1))
    with pytest.raises(TypeError, match="writable"):
        encode_tensors_into(tensors, memoryview(bytes(len(expected))))


def test_empty_mapping_round_trips() -> None:
    data = encode_tensors({})
    assert len(data) == 8
    assert decode_tensors(data) == {}


@pytest.mark.parametrize(
    ("tensors", "error", "match"),
    [
        ({"x": np.array(["a"])}, TensorFormatError, "does not carry"),
        ({"x": np.array([object()])}, TensorFormatError, "does not carry"),
        ({"x": np.zeros(2, np.complex64)}, TensorFormatError, "does not carry"),
        ({"": np.zeros(2)}, TensorFormatError, "empty"),
        ({"a\nb": np.zeros(2)}, TensorFormatError, "control character"),
        ({"x" * 300: np.zeros(2)}, TensorFormatError, "over the limit"),
        ({"x": np.zeros((1,) * 9)}, TensorFormatError, "rank 9"),
        ({"x": [1, 2]}, TypeError, "numpy array"),
        ({1: np.zeros(2)}, TypeError, "names must be str"),
    ],
)
def test_encode_refuses(tensors: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        encode_tensors(tensors)


def test_encode_refuses_a_non_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        encode_tensors([("x", np.zeros(1))])  # type: ignore[arg-type]


def test_limits_apply_on_both_sides() -> None:
    limits = TensorLimits(max_tensors=2, max_elements=10, max_total_bytes=1000)
    with pytest.raises(TensorFormatError, match="3 tensors"):
        encode_tensors({str(i): np.zeros(1) for i in range(3)}, limits=limits)
    with pytest.raises(TensorFormatError, match="12 elements"):
        encode_tensors({"x": np.zeros((4, 3), np.int8)}, limits=limits)
    with pytest.raises(TensorFormatError, match="dimension 11"):
        encode_tensors({"x": np.zeros(11, np.int8)}, limits=limits)
    with pytest.raises(TensorFormatError, match=r"272 bytes, over the limit of 100$"):
        encode_tensors(
            {"x": np.zeros(10), "y": np.zeros(10) + 1}, limits=TensorLimits(max_total_bytes=100)
        )
    big = encode_tensors({str(i): np.zeros(1) for i in range(3)})
    with pytest.raises(TensorFormatError, match="3 tensors"):
        decode_tensors(big, limits=limits)
    many = encode_tensors({"x": np.zeros((4, 3), np.int8)})
    with pytest.raises(TensorFormatError, match="12 elements"):
        decode_tensors(many, limits=limits)
    with pytest.raises(TensorFormatError, match="over the limit"):
        decode_tensors(many, limits=TensorLimits(max_total_bytes=len(many) - 1))


@pytest.mark.parametrize("field", ["max_tensors", "max_rank", "max_name_bytes", "max_elements"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_limits_validate(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TensorLimits(**{field: value})  # type: ignore[arg-type]


def _header(count: int, *, magic: bytes = b"SSTN", version: int = 1, reserved: int = 0) -> bytes:
    return struct.pack("<4sBBH", magic, version, reserved, count)


def _descriptor(name: bytes, code: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack(f"<HBB{len(shape)}Q", len(name), code, len(shape), *shape) + name


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 64)


def test_hand_made_buffer_decodes() -> None:
    data = _pad(_header(1) + _descriptor(b"x", 7, (2,))) + struct.pack("<2q", -1, 5)
    np.testing.assert_array_equal(decode_tensors(data)["x"], np.array([-1, 5]))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "shorter than the header"),
        (b"SSTN\x01", "shorter than the header"),
        (_header(0, magic=b"NOPE"), "magic"),
        (_header(0, version=2), "version 2"),
        (_header(0, reserved=1), "reserved"),
        (_header(1), "descriptor 0 is cut off"),
        (_header(1) + _descriptor(b"x", 8, ()), "unknown dtype code 8"),
        (_header(1) + _descriptor(b"x", 99, ()), "unknown dtype code 99"),
        (_header(1) + _descriptor(b"", 1, ()), "name of 0 bytes"),
        (_header(1) + _descriptor(b"\xff\xfe", 1, ()), "not utf-8"),
        (_header(1) + _descriptor(b"a\x00", 1, ()), "control character"),
        (_header(1) + _descriptor(b"x", 1, (1,) * 9), "rank 9"),
        (_header(1) + _descriptor(b"x", 1, (2**40, 2**40)), "dimension"),
        (_header(1) + _descriptor(b"x", 1, (2**20, 2**20)), "elements"),
        (_header(1) + struct.pack("<HBB", 5, 1, 0) + b"ab", "cut off"),
        (_header(2) + _descriptor(b"x", 2, ()) + _descriptor(b"x", 2, ()), "appears twice"),
        (_header(1) + _descriptor(b"x", 1, (4,)), "needs 16 bytes"),
        (_pad(_header(1) + _descriptor(b"x", 2, (1,))) + b"\x01\x00", "unexpected bytes"),
        (_pad(_header(1) + _descriptor(b"x", 9, (2,))) + b"\x01\x02", "bool tensor"),
        (_header(1) + _descriptor(b"x", 2, (1,)) + b"\x01" * 64, "padding"),
        (_header(0) + b"\x00", "unexpected bytes"),
    ],
)
def test_decode_rejects(data: bytes, match: str) -> None:
    with pytest.raises(TensorFormatError, match=match):
        decode_tensors(data)


def test_decode_rejects_wrong_types() -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        decode_tensors("SSTN")  # type: ignore[arg-type]
    strided = memoryview(bytearray(32))[::2]
    with pytest.raises(TypeError, match="contiguous"):
        decode_tensors(strided)


def test_format_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="magic"):
        decode_tensors(b"XXXXXXXX")


def test_decode_accepts_a_multi_byte_memoryview() -> None:
    data = encode_tensors({"x": np.arange(8, dtype=np.uint8)})
    assert len(data) % 8 == 0
    words = np.frombuffer(data, np.uint64).reshape(-1, 1)
    np.testing.assert_array_equal(decode_tensors(memoryview(words))["x"], np.arange(8))
