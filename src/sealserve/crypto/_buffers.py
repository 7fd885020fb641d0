"""Buffers without needless copies: bytes views, zeroing, and building ``bytes`` in place.

:func:`fill_new_bytes` builds a large ``bytes`` without the copy that ``bytes(bytearray)`` costs.

:func:`~sealserve.crypto.seal` returns ``bytes`` (what HTTP clients and hashes expect), but the
envelope is a header followed by the AES-GCM output; assembling it by concatenation would copy
the whole ciphertext once more, which at tens of MiB costs as much as the encryption itself.

On CPython, ``PyBytes_FromStringAndSize(NULL, n)`` is the documented way to make a bytes object
whose contents the creator fills in before anyone else sees it; :func:`fill_new_bytes` does
exactly that: it allocates, lets ``fill`` write through a writable view, drops the view, and
only then returns the object.  Sizes below 2 are refused (CPython shares those objects).  Other
interpreters fall back to one extra copy.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

__all__ = ["Buffer", "as_bytes_view", "fill_new_bytes", "zero"]

Buffer = bytes | bytearray | memoryview

_MIN_SIZE = 2


_PYBUF_WRITE = 0x200


def _bind_cpython() -> (
    tuple[Callable[[None, int], bytes], Callable[[bytes, int], memoryview]] | None
):
    if sys.implementation.name != "cpython":  # pragma: no cover - CPython is what we ship on
        return None
    api = ctypes.pythonapi
    from_size = api.PyBytes_FromStringAndSize
    from_size.restype = ctypes.py_object
    from_size.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    as_string = api.PyBytes_AsString
    as_string.restype = ctypes.c_void_p
    as_string.argtypes = [ctypes.py_object]
    view_of = api.PyMemoryView_FromMemory
    view_of.restype = ctypes.py_object
    view_of.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]

    def writable_view(obj: bytes, size: int) -> memoryview:
        view: memoryview = view_of(as_string(obj), size, _PYBUF_WRITE)
        return view

    return from_size, writable_view


_CPYTHON = _bind_cpython()


def fill_new_bytes(size: int, fill: Callable[[memoryview], None]) -> bytes:
    """A new ``bytes`` of ``size`` bytes whose every byte ``fill`` writes through the view.

    ``fill`` must write all ``size`` bytes and must not keep the view.  If it raises, the
    half-built object is discarded and the exception propagates.
    """
    if size < _MIN_SIZE:
        raise ValueError(f"size must be >= {_MIN_SIZE}, got {size!r}")
    if _CPYTHON is None:  # pragma: no cover - CPython is what we ship on
        scratch = bytearray(size)
        fill(memoryview(scratch))
        return bytes(scratch)
    from_size, writable_view = _CPYTHON
    out = from_size(None, size)
    view = writable_view(out, size)
    try:
        fill(view)
    finally:
        view.release()
    return out


def as_bytes_view(value: Buffer, name: str) -> memoryview:
    """A flat unsigned-byte view of ``value``; ``TypeError`` naming ``name`` otherwise."""
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(f"{name} must be a bytes-like object, got {type(value).__name__}") from None
    if view.format != "B" or view.ndim != 1:
        try:
            view = view.cast("B")
        except TypeError as exc:
            raise TypeError(f"{name} must be a contiguous bytes-like object") from exc
    return view


_ZEROS = bytes(1 << 20)


def zero(view: memoryview) -> None:
    """Overwrite ``view`` with zeros, a megabyte at a time (no allocation)."""
    for start in range(0, len(view), len(_ZEROS)):
        end = min(start + len(_ZEROS), len(view))
        view[start:end] = _ZEROS[: end - start]
