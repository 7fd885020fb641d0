"""Canonical encoding: one byte string per mapping, and one mapping per byte string.

Everything sealserve signs or binds as associated data (an envelope's context, a signed
request, simulated evidence, HPKE ``info``) is first put in this form, so that two different
mappings can never produce the same bytes and the same mapping always produces the same bytes
whatever the order it was built in::

    encoding := count:u32 entry*                       (entries sorted by key bytes)
    entry    := key_len:u16 key:utf8 tag:u8 value_len:u32 value
    tag      := 's' (UTF-8 text) | 'i' (signed 64-bit big-endian) | 'b' (raw bytes)

All integers are big-endian.  :func:`canonical_decode` accepts exactly what
:func:`canonical_encode` produces (sorted, no duplicates, no trailing bytes), so
``canonical_encode(canonical_decode(data)) == data`` for every accepted ``data``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

__all__ = ["MAX_KEY_BYTES", "CanonicalValue", "canonical_decode", "canonical_encode"]

#: A value of a canonical mapping.
CanonicalValue = str | int | bytes

#: Longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

_MAX_ENTRIES = 1 << 16
_MAX_VALUE_BYTES = (1 << 32) - 1
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_I64 = struct.Struct(">q")
#: A key of at most this many characters is at most MAX_KEY_BYTES UTF-8 bytes.
_FAST_KEY_CHARS = MAX_KEY_BYTES // 4


def canonical_encode(mapping: Mapping[str, CanonicalValue]) -> bytes:
    """Encode ``mapping`` unambiguously, keys sorted by their UTF-8 bytes.

    Keys are non-empty text of at most :data:`MAX_KEY_BYTES` UTF-8 bytes; values are ``str``,
    ``int`` (signed 64-bit; ``bool`` is refused as ambiguous) or ``bytes``-like.
    """
    if type(mapping) is not dict and not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a Mapping, got {type(mapping).__name__}")
    if len(mapping) > _MAX_ENTRIES:
        raise ValueError(f"mapping has {len(mapping)} entries; at most {_MAX_ENTRIES} allowed")
    parts = [_U32.pack(len(mapping))]
    # UTF-8 byte order is code point order, so sorting the str keys sorts their encodings.
    try:
        keys = sorted(mapping)
    except TypeError:
        for key in mapping:
            _encode_key(key)  # raises, naming the key
        raise
    for key in keys:
        value = mapping[key]
        if type(key) is str and type(value) is str and 0 < len(key) <= _FAST_KEY_CHARS:
            try:
                key_bytes, value_bytes = key.encode(), value.encode()
            except UnicodeEncodeError:
                key_bytes, (_, value_bytes) = _encode_key(key), _encode_value(key, value)
            parts += (_U16.pack(len(key_bytes)), key_bytes, b"s", _U32.pack(len(value_bytes)))
        else:
            key_bytes = _encode_key(key)
            tag, value_bytes = _encode_value(key, value)
            parts += (_U16.pack(len(key_bytes)), key_bytes, tag, _U32.pack(len(value_bytes)))
        parts.append(value_bytes)
    return b"".join(parts)


def canonical_decode(data: bytes | bytearray | memoryview) -> dict[str, CanonicalValue]:
    """Decode what :func:`canonical_encode` produced; ``ValueError`` for anything else."""
    view = memoryview(data).cast("B")
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if n > len(view) - pos:
            raise ValueError("canonical encoding is truncated")
        chunk = view[pos : pos + n]
        pos += n
        return chunk

    (count,) = _U32.unpack(take(4))
    if count > _MAX_ENTRIES:
        raise ValueError(f"canonical encoding claims {count} entries")
    out: dict[str, CanonicalValue] = {}
    previous: bytes | None = None
    for _ in range(count):
        (key_len,) = _U16.unpack(take(2))
        key_bytes = bytes(take(key_len))
        if previous is not None and key_bytes <= previous:
            raise ValueError("canonical encoding has unsorted or duplicate keys")
        previous = key_bytes
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("canonical encoding has a key that is not UTF-8") from exc
        _encode_key(key)  # same rules as encoding (non-empty, bounded)
        tag = bytes(take(1))
        (value_len,) = _U32.unpack(take(4))
        raw = bytes(take(value_len))
        if tag == b"s":
            try:
                out[key] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"canonical value of {key!r} is not UTF-8") from exc
        elif tag == b"i":
            if value_len != 8:
                raise ValueError(f"canonical integer {key!r} is not 8 bytes")
            out[key] = _I64.unpack(raw)[0]
        elif tag == b"b":
            out[key] = raw
        else:
            raise ValueError(f"canonical value of {key!r} has unknown tag {tag!r}")
    if pos != len(view):
        raise ValueError("canonical encoding has trailing bytes")
    return out


def _encode_key(key: object) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"canonical keys must be str, got {type(key).__name__}: {key!r}")
    try:
        key_bytes = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"canonical key {key!r} is not valid Unicode text") from exc
    if not key_bytes or len(key_bytes) > MAX_KEY_BYTES:
        raise ValueError(f"canonical key {key!r} must be 1 to {MAX_KEY_BYTES} UTF-8 bytes long")
    return key_bytes


def _encode_value(key: str, value: object) -> tuple[bytes, bytes]:
    if isinstance(value, bool):
        raise TypeError(f"canonical value of {key!r} is a bool; use 0/1 or a string")
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"canonical value of {key!r} is not valid Unicode text") from exc
        tag = b"s"
    elif isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"canonical integer {key!r} = {value!r} is outside signed 64 bits")
        return b"i", _I64.pack(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        tag = b"b"
    else:
        raise TypeError(
            f"canonical value of {key!r} must be str, int or bytes, got {type(value).__name__}"
        )
    if len(raw) > _MAX_VALUE_BYTES:
        raise ValueError(f"canonical value of {key!r} is longer than {_MAX_VALUE_BYTES} bytes")
    return tag, raw
