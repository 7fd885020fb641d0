"""A safe container for named tensors on the wire: no pickle, one canonical encoding.

Clients and the runtime exchange named tensors (a model's inputs and outputs) inside sealed
envelopes.  The envelope authenticates the bytes; this format makes sure that whatever the
bytes say is checked before it is believed: every length, count, dtype and shape is validated
against hard limits, and every accepted buffer is the one encoding of its tensors (zero
padding, no trailing bytes), so ``encode_tensors(decode_tensors(b)) == b`` for every ``b``
that decodes.

Layout (all integers little-endian)::

    header        magic b"SSTN" | version u8 = 1 | reserved u8 = 0 | count u16
    descriptors   count x ( name_len u16 | dtype u8 | rank u8 | dims u64 x rank | name utf-8 )
    data          each tensor's C-order bytes, starting at the next multiple of 64 from the
                  start of the buffer; the gaps are zero; the buffer ends where the last
                  tensor's data ends (or after the descriptors when there is no data)

dtype codes are ONNX's ``TensorProto.DataType`` numbers, restricted to plain numbers and bool.
Data is little-endian; a bool byte must be 0 or 1.

``decode_tensors(buf, copy=False)`` returns views over ``buf`` (aligned to 64 bytes relative
to its start), for reading a message in place, e.g. from a shared-memory sample; the views
keep ``buf`` alive and are writable only if ``buf`` is.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from sealserve.crypto._buffers import fill_new_bytes
from sealserve.errors import TensorFormatError

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "MAGIC",
    "BytesLike",
    "TensorLimits",
    "decode_tensors",
    "encode_tensors",
    "encode_tensors_into",
    "encoded_size",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview

MAGIC = b"SSTN"
FORMAT_VERSION = 1
_ALIGN = 64
_HEADER = struct.Struct("<4sBBH")
_DESCRIPTOR = struct.Struct("<HBB")

# ONNX TensorProto.DataType codes -> little-endian numpy dtypes.
_CODE_TO_DTYPE: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    4: np.dtype("<u2"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    9: np.dtype("?"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
    12: np.dtype("<u4"),
    13: np.dtype("<u8"),
}
_DTYPE_TO_CODE: dict[np.dtype[Any], int] = {dt: code for code, dt in _CODE_TO_DTYPE.items()}
_ALLOWED_NAMES = ", ".join(sorted(str(dt.name) for dt in _CODE_TO_DTYPE.values()))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorLimits:
    """Hard limits that both encoding and decoding enforce."""

    max_tensors: int = 256
    max_name_bytes: int = 256
    max_rank: int = 8
    #: Elements of one tensor.
    max_elements: int = 1 << 31
    #: Size of the whole encoded buffer.
    max_total_bytes: int = 1 << 31

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field.name} must be a positive int, got {value!r}")
        if self.max_tensors > 0xFFFF:
            raise ValueError(f"max_tensors must be <= 65535, got {self.max_tensors!r}")
        if self.max_name_bytes > 0xFFFF:
            raise ValueError(f"max_name_bytes must be <= 65535, got {self.max_name_bytes!r}")
        if self.max_rank > 0xFF:
            raise ValueError(f"max_rank must be <= 255, got {self.max_rank!r}")


DEFAULT_LIMITS = TensorLimits()


def _align(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _check_name(name: str, limits: TensorLimits) -> bytes:
    if not name:
        raise TensorFormatError("tensor name is empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise TensorFormatError(f"tensor name {name!r} contains a control character")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TensorFormatError(f"tensor name {name!r} is not valid unicode") from exc
    if len(raw) > limits.max_name_bytes:
        raise TensorFormatError(
            f"tensor name {name[:40]!r}... is {len(raw)} bytes, over the limit of "
            f"{limits.max_name_bytes}"
        )
    return raw


def _check_shape(name: str, shape: tuple[int, ...], limits: TensorLimits) -> int:
    if len(shape) > limits.max_rank:
        raise TensorFormatError(
            f"tensor {name!r} has rank {len(shape)}, over the limit of {limits.max_rank}"
        )
    count = 1
    for dim in shape:
        if dim > limits.max_elements:
            raise TensorFormatError(
                f"tensor {name!r} has dimension {dim}, over the element limit of "
                f"{limits.max_elements}"
            )
        count *= dim
    if count > limits.max_elements:
        raise TensorFormatError(
            f"tensor {name!r} has {count} elements, over the limit of {limits.max_elements}"
        )
    return count


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: bytes
    code: int
    shape: tuple[int, ...]
    array: npt.NDArray[Any]


def _plan(
    tensors: Mapping[str, npt.NDArray[Any]], limits: TensorLimits
) -> tuple[list[_Entry], list[int], int]:
    """Validate ``tensors`` and lay them out: entries, data offsets, total size."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name to numpy array, got {tensors!r:.80}")
    if len(tensors) > limits.max_tensors:
        raise TensorFormatError(f"{len(tensors)} tensors is over the limit of {limits.max_tensors}")
    entries: list[_Entry] = []
    header_end = _HEADER.size
    for name, given in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        value: object = given
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise TypeError(f"tensor {name!r} must be a numpy array, got {type(value).__name__}")
        array: npt.NDArray[Any] = value
        raw_name = _check_name(name, limits)
        native = array.dtype
        wire = native.newbyteorder("<")
        code = _DTYPE_TO_CODE.get(wire)
        if code is None:
            raise TensorFormatError(
                f"tensor {name!r} has dtype {native}, which the format does not carry; "
                f"allowed: {_ALLOWED_NAMES}"
            )
        _check_shape(name, array.shape, limits)
        data = np.ascontiguousarray(array, dtype=wire)
        entries.append(_Entry(raw_name, code, tuple(array.shape), data))
        header_end += _DESCRIPTOR.size + 8 * array.ndim + len(raw_name)
    offsets: list[int] = []
    end = header_end
    for entry in entries:
        start = _align(end)
        offsets.append(start)
        end = start + entry.array.nbytes
    if end > limits.max_total_bytes:
        raise TensorFormatError(
            f"the encoding would be {end} bytes, over the limit of {limits.max_total_bytes}"
        )
    return entries, offsets, end


def encoded_size(
    tensors: Mapping[str, npt.NDArray[Any]], *, limits: TensorLimits = DEFAULT_LIMITS
) -> int:
    """The exact size of ``encode_tensors(tensors)``, for sizing a buffer or a loan."""
    return _plan(tensors, limits)[2]


def encode_tensors(
    tensors: Mapping[str, npt.NDArray[Any]], *, limits: TensorLimits = DEFAULT_LIMITS
) -> bytes:
    """Encode named arrays, in the mapping's order, into one canonical buffer."""
    entries, offsets, total = _plan(tensors, limits)

    def fill(out: memoryview) -> None:  # _write writes every byte, padding included
        _write(entries, offsets, out)

    return fill_new_bytes(total, fill)  # no zero-filled scratch buffer, no copy


def encode_tensors_into(
    tensors: Mapping[str, npt.NDArray[Any]],
    out: bytearray | memoryview,
    *,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> int:
    """Encode into the start of the writable buffer ``out``; return the bytes written.

    Every byte of ``out[:n]`` is written (padding included), so ``out`` may hold old data.
    """
    entries, offsets, total = _plan(tensors, limits)
    view = memoryview(out)
    if view.readonly:
        raise TypeError("out must be a writable buffer")
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    if view.nbytes < total:
        raise ValueError(f"out has {view.nbytes} bytes; the encoding needs {total}")
    _write(entries, offsets, view[:total])
    return total


def _write(entries: list[_Entry], offsets: list[int], out: memoryview) -> None:
    _HEADER.pack_into(out, 0, MAGIC, FORMAT_VERSION, 0, len(entries))
    pos = _HEADER.size
    for entry in entries:
        rank = len(entry.shape)
        _DESCRIPTOR.pack_into(out, pos, len(entry.name), entry.code, rank)
        pos += _DESCRIPTOR.size
        struct.pack_into(f"<{rank}Q", out, pos, *entry.shape)
        pos += 8 * rank
        out[pos : pos + len(entry.name)] = entry.name
        pos += len(entry.name)
    for entry, start in zip(entries, offsets, strict=True):
        out[pos:start] = bytes(start - pos)
        nbytes = entry.array.nbytes
        if nbytes:
            out[start : start + nbytes] = entry.array.reshape(-1).view(np.uint8).data
        pos = start + nbytes


def decode_tensors(
    data: BytesLike,
    *,
    copy: bool = True,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> dict[str, npt.NDArray[Any]]:
    """Decode a buffer made by :func:`encode_tensors` into named arrays, in order.

    With ``copy=False`` the arrays are views over ``data`` (zero copy).  Anything that is not
    exactly a canonical encoding within ``limits`` raises :class:`TensorFormatError`.
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be a bytes-like object, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise TypeError("data must be a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    total = view.nbytes
    if total > limits.max_total_bytes:
        raise TensorFormatError(
            f"buffer is {total} bytes, over the limit of {limits.max_total_bytes}"
        )
    if total < _HEADER.size:
        raise TensorFormatError(f"buffer is {total} bytes, shorter than the header")
    magic, version, reserved, count = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise TensorFormatError("buffer does not start with the tensor container magic")
    if version != FORMAT_VERSION:
        raise TensorFormatError(
            f"tensor container version {version} is not supported (this reads {FORMAT_VERSION})"
        )
    if reserved != 0:
        raise TensorFormatError(f"reserved header byte is {reserved}, must be 0")
    if count > limits.max_tensors:
        raise TensorFormatError(f"{count} tensors is over the limit of {limits.max_tensors}")

    pos = _HEADER.size
    described: list[tuple[str, np.dtype[Any], tuple[int, ...], int]] = []
    seen: set[str] = set()
    for index in range(count):
        if pos + _DESCRIPTOR.size > total:
            raise TensorFormatError(f"descriptor {index} is cut off at byte {pos}")
        name_len, code, rank = _DESCRIPTOR.unpack_from(view, pos)
        pos += _DESCRIPTOR.size
        dtype = _CODE_TO_DTYPE.get(code)
        if dtype is None:
            raise TensorFormatError(f"descriptor {index} has unknown dtype code {code}")
        if rank > limits.max_rank:
            raise TensorFormatError(
                f"descriptor {index} has rank {rank}, over the limit of {limits.max_rank}"
            )
        if name_len == 0 or name_len > limits.max_name_bytes:
            raise TensorFormatError(
                f"descriptor {index} has a name of {name_len} bytes "
                f"(allowed 1 to {limits.max_name_bytes})"
            )
        if pos + 8 * rank + name_len > total:
            raise TensorFormatError(f"descriptor {index} is cut off at byte {pos}")
        shape = struct.unpack_from(f"<{rank}Q", view, pos)
        pos += 8 * rank
        try:
            name = bytes(view[pos : pos + name_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise TensorFormatError(f"descriptor {index} has a name that is not utf-8") from None
        pos += name_len
        _check_name(name, limits)
        if name in seen:
            raise TensorFormatError(f"tensor name {name!r} appears twice")
        seen.add(name)
        elements = _check_shape(name, shape, limits)
        described.append((name, dtype, shape, elements))

    out: dict[str, npt.NDArray[Any]] = {}
    for name, dtype, shape, elements in described:
        start = _align(pos)
        nbytes = elements * dtype.itemsize
        if start + nbytes > total:
            raise TensorFormatError(
                f"tensor {name!r} needs {nbytes} bytes at offset {start}; the buffer has {total}"
            )
        if any(view[pos:start]):
            raise TensorFormatError(f"padding before tensor {name!r} is not zero")
        out[name] = _array(view[start : start + nbytes], dtype, shape, name, copy=copy)
        pos = start + nbytes
    if pos != total:
        raise TensorFormatError(f"{total - pos} unexpected bytes after the last tensor")
    return out


def _array(
    raw: memoryview, dtype: np.dtype[Any], shape: tuple[int, ...], name: str, *, copy: bool
) -> npt.NDArray[Any]:
    if math.prod(shape) == 0:
        return np.empty(shape, dtype=dtype)
    if dtype == np.bool_ and bytes(raw).translate(None, b"\x00\x01"):
        raise TensorFormatError(f"bool tensor {name!r} holds a byte other than 0 or 1")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array.copy() if copy else array
