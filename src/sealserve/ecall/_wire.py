"""The frames of the runtime's call surface: ecalls (host -> runtime) and ocalls (back).

Every message on the ipc connection between the instance host and the runtime is one frame
(all integers little-endian)::

    offset  size  field
    0       4     magic         b"SSRT"
    4       1     version       1
    5       1     kind          1 = call, 2 = reply
    6       1     op            what is called (see :class:`Op`)
    7       1     status        0 = ok; else the error of a reply (see :class:`Status`)
    8       8     call_id       the caller's number; a reply carries its call's
    16      4     meta_len      bytes of the meta object
    20      4     reserved      0
    24      8     payload_len   bytes of the payload
    32      n     meta          a JSON object (UTF-8): ids, sizes, timings; never a secret
    ...           zero padding to the next multiple of 64
    ...           payload       opaque bytes: a sealed input or output, a sealed model, a
                                KeyService message; always ciphertext or public data

A frame is exactly ``payload_offset + payload_len`` bytes; anything else is refused.  The
payload is 64-byte aligned from the start of the frame, so it can be written and read in
place in shared memory (a loan, a sample) with no copy.  Frames come from the other process,
which for the runtime is untrusted: :func:`parse_frame` checks every field before use.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
from collections.abc import Mapping
from typing import Any, Final

from sealserve.errors import (
    AccessDenied,
    AttestationError,
    DeadlineExceeded,
    InvalidEnvelope,
    IPCError,
    KeyServiceError,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    RuntimeError_,
    RuntimeUnavailable,
    SealserveError,
)

__all__ = [
    "HEADER_BYTES",
    "MAX_META_BYTES",
    "Frame",
    "Kind",
    "Op",
    "Status",
    "encode_meta",
    "error_for",
    "frame_size",
    "parse_frame",
    "status_for",
    "write_header",
]

_MAGIC: Final = b"SSRT"
_VERSION: Final = 1
_HEADER = struct.Struct("<4sBBBBQIIQ")
HEADER_BYTES: Final = _HEADER.size
#: Largest meta object a frame may carry.
MAX_META_BYTES: Final = 64 * 1024
_ALIGN: Final = 64


class Kind(enum.IntEnum):
    CALL = 1
    REPLY = 2


class Op(enum.IntEnum):
    """What a call asks.  Ecalls go from the host into the runtime, ocalls back out."""

    # ecalls
    STATS = 1
    LOAD = 2
    INFER = 3
    EVICT = 4
    #: Attest the KeyService now (before any model), as part of the runtime's start.
    PREPARE = 5
    # ocalls
    FETCH_MODEL = 16
    KEYSERVICE = 17


class Status(enum.IntEnum):
    """The outcome of a call, as carried by its reply."""

    OK = 0
    INVALID_ENVELOPE = 1
    ACCESS_DENIED = 2
    DEADLINE_EXCEEDED = 3
    MODEL_NOT_AVAILABLE = 4
    MEMORY_BUDGET_EXCEEDED = 5
    KEYSERVICE_ERROR = 6
    BAD_REQUEST = 7
    UNAVAILABLE = 8
    INTERNAL = 9
    ATTESTATION_FAILED = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame; ``payload`` views the buffer it was parsed from (no copy)."""

    kind: Kind
    op: Op
    status: Status
    call_id: int
    meta: dict[str, Any]
    payload: memoryview


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def encode_meta(meta: Mapping[str, Any] | None) -> bytes:
    """The compact JSON of ``meta`` (``ValueError`` if over :data:`MAX_META_BYTES`)."""
    raw = b"{}" if not meta else json.dumps(meta, separators=(",", ":")).encode("utf-8")
    if len(raw) > MAX_META_BYTES:
        raise ValueError(f"meta is {len(raw)} bytes; a frame carries at most {MAX_META_BYTES}")
    return raw


def frame_size(meta_len: int, payload_len: int) -> int:
    """Bytes of a frame with ``meta_len`` bytes of meta and ``payload_len`` of payload."""
    if not 0 <= meta_len <= MAX_META_BYTES:
        raise ValueError(f"meta_len must be within [0, {MAX_META_BYTES}], got {meta_len!r}")
    if payload_len < 0:
        raise ValueError(f"payload_len must be >= 0, got {payload_len!r}")
    return _align(HEADER_BYTES + meta_len) + payload_len


def write_header(
    out: memoryview,
    *,
    kind: Kind,
    op: Op,
    status: Status = Status.OK,
    call_id: int,
    meta: bytes,
    payload_len: int,
) -> int:
    """Write the header, the meta and the padding of a frame at the start of ``out`` (which
    must hold :func:`frame_size` bytes); return the payload's offset, for the caller to fill.
    """
    meta_end = HEADER_BYTES + len(meta)
    offset = _align(meta_end)
    if len(out) < offset + payload_len:
        raise ValueError(f"out has {len(out)} bytes; the frame needs {offset + payload_len}")
    _HEADER.pack_into(
        out, 0, _MAGIC, _VERSION, kind, op, status, call_id, len(meta), 0, payload_len
    )
    out[HEADER_BYTES:meta_end] = meta
    if offset > meta_end:
        out[meta_end:offset] = bytes(offset - meta_end)
    return offset


def parse_frame(view: memoryview) -> Frame:
    """Parse and check one frame; :class:`~sealserve.errors.IPCError` naming what is wrong."""
    size = len(view)
    if size < HEADER_BYTES:
        raise IPCError(f"malformed frame: {size} bytes is shorter than the header")
    magic, version, kind, op, status, call_id, meta_len, reserved, payload_len = (
        _HEADER.unpack_from(view, 0)
    )
    if magic != _MAGIC:
        raise IPCError("malformed frame: bad magic")
    if version != _VERSION:
        raise IPCError(f"malformed frame: version {version}, this side speaks {_VERSION}")
    if reserved != 0:
        raise IPCError("malformed frame: reserved bits set")
    if meta_len > MAX_META_BYTES:
        raise IPCError(f"malformed frame: meta of {meta_len} bytes is over the limit")
    offset = _align(HEADER_BYTES + meta_len)
    if offset + payload_len != size:
        raise IPCError(f"malformed frame: {size} bytes, but its header says {offset + payload_len}")
    try:
        kind_ = Kind(kind)
        op_ = Op(op)
        status_ = Status(status)
    except ValueError as exc:
        raise IPCError(f"malformed frame: {exc}") from None
    if kind_ is Kind.CALL and status_ is not Status.OK:
        raise IPCError("malformed frame: a call carries a status")
    meta_view = view[HEADER_BYTES : HEADER_BYTES + meta_len]
    if any(view[HEADER_BYTES + meta_len : offset]):
        raise IPCError("malformed frame: non-zero padding")
    try:
        meta = json.loads(bytes(meta_view)) if meta_len else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IPCError("malformed frame: meta is not JSON") from None
    if not isinstance(meta, dict):
        raise IPCError("malformed frame: meta is not a JSON object")
    return Frame(kind_, op_, status_, call_id, meta, view[offset:])


# -- errors across the boundary ----------------------------------------------------------------

_FIXED: Final[dict[Status, type[SealserveError]]] = {
    Status.INVALID_ENVELOPE: InvalidEnvelope,
    Status.ACCESS_DENIED: AccessDenied,
    Status.ATTESTATION_FAILED: AttestationError,
}
_WITH_MESSAGE: Final[dict[Status, type[Exception]]] = {
    Status.DEADLINE_EXCEEDED: DeadlineExceeded,
    Status.MODEL_NOT_AVAILABLE: ModelNotAvailable,
    Status.MEMORY_BUDGET_EXCEEDED: MemoryBudgetExceeded,
    Status.KEYSERVICE_ERROR: KeyServiceError,
    Status.BAD_REQUEST: ValueError,
    Status.UNAVAILABLE: RuntimeUnavailable,
    Status.INTERNAL: RuntimeError_,
}


def status_for(exc: BaseException) -> tuple[Status, str]:
    """The status and message that carry ``exc`` across the boundary.

    Only sealserve's own errors and ``ValueError`` keep their message (they are written to
    say nothing secret); anything else becomes a generic internal error.
    """
    for status, cls in _FIXED.items():
        if isinstance(exc, cls):
            return status, str(exc)
    ordered = (
        (DeadlineExceeded, Status.DEADLINE_EXCEEDED),
        (ModelNotAvailable, Status.MODEL_NOT_AVAILABLE),
        (MemoryBudgetExceeded, Status.MEMORY_BUDGET_EXCEEDED),
        (KeyServiceError, Status.KEYSERVICE_ERROR),
        (RuntimeUnavailable, Status.UNAVAILABLE),
        (RuntimeError_, Status.INTERNAL),
    )
    for cls, status in ordered:
        if isinstance(exc, cls):
            return status, str(exc)
    if isinstance(exc, ValueError) and not isinstance(exc, SealserveError):
        return Status.BAD_REQUEST, str(exc)
    return Status.INTERNAL, f"internal error ({type(exc).__name__})"


def error_for(status: Status, message: str, *, retryable: bool = False) -> Exception:
    """The exception a reply with ``status`` stands for (the inverse of :func:`status_for`).

    ``retryable`` marks an error of a class that is not retryable in general as retryable
    this time (a KeyService that is unreachable now, say).
    """
    fixed = _FIXED.get(status)
    if fixed is not None:
        return fixed()
    cls = _WITH_MESSAGE.get(status, RuntimeError_)
    error = cls(message or status.name.lower())
    if retryable and isinstance(error, SealserveError) and not error.retryable:
        error.retryable = True
    return error
