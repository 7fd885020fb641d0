"""A private plaintext buffer that onnxruntime can read and the runtime can wipe.

onnxruntime builds a session only from a path or a ``bytes`` object, and a ``bytes`` object
cannot be written to or wiped from Python.  A file would put the plaintext model where other
processes of the same user can open it (``/proc/<pid>/fd``), so the runtime makes the
``bytes`` object itself: CPython's documented ``PyBytes_FromStringAndSize(NULL, n)`` creates
one whose contents the creator fills in before anyone else sees it.  The model is unsealed
straight into it (one pass, no other plaintext copy), handed to onnxruntime, and zeroed as
soon as the session is built (onnxruntime keeps its own copy of the weights).

Other interpreters fall back to a ``bytearray`` plus one copy at hand-over.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

__all__ = ["PlaintextBuffer"]

_PYBUF_WRITE: Final = 0x200
_ZEROS: Final = bytes(1 << 20)


def _bind() -> tuple[object, object, object] | None:
    if sys.implementation.name != "cpython":  # pragma: no cover - CPython is what we ship on
        return None
    api = ctypes.pythonapi
    new = api.PyBytes_FromStringAndSize
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    address = api.PyBytes_AsString
    address.restype = ctypes.c_void_p
    address.argtypes = [ctypes.py_object]
    view = api.PyMemoryView_FromMemory
    view.restype = ctypes.py_object
    view.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
    return new, address, view


_API = _bind()


class PlaintextBuffer:
    """``size`` bytes to fill through :attr:`view`, read as :attr:`data`, then :meth:`wipe`.

    Use it as a context manager: the bytes are zeroed on exit whatever happened.  Whoever
    receives :attr:`data` must drop every reference before the wipe (the wipe writes zeros
    into the object; nobody may be relying on its contents any more).
    """

    __slots__ = ("_data", "_scratch", "_size", "_view")

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ValueError(f"size must be an int >= 2, got {size!r}")
        self._size = size
        self._scratch: bytearray | None = None
        if _API is None:  # pragma: no cover - CPython is what we ship on
            self._scratch = bytearray(size)
            self._data: bytes | None = None
            self._view: memoryview | None = memoryview(self._scratch)
            return
        new, address, view = _API
        data: bytes = new(None, size)  # type: ignore[operator]
        self._data = data
        self._view = view(address(data), size, _PYBUF_WRITE)  # type: ignore[operator]

    @property
    def size(self) -> int:
        return self._size

    @property
    def view(self) -> memoryview:
        """A writable view of the buffer (fill it before reading :attr:`data`)."""
        if self._view is None:
            raise ValueError("the plaintext buffer was wiped")
        return self._view

    @property
    def data(self) -> bytes:
        """The buffer as one ``bytes`` object (what onnxruntime takes)."""
        if self._view is None:
            raise ValueError("the plaintext buffer was wiped")
        if self._data is None:  # pragma: no cover - the non-CPython fallback
            assert self._scratch is not None
            self._data = bytes(self._scratch)
        return self._data

    def wipe(self) -> None:
        """Overwrite every byte with zeros and let go of the buffer (idempotent)."""
        view = self._view
        if view is None:
            return
        for start in range(0, self._size, len(_ZEROS)):
            end = min(start + len(_ZEROS), self._size)
            view[start:end] = _ZEROS[: end - start]
        view.release()
        self._view = None
        self._data = None
        self._scratch = None

    def __enter__(self) -> PlaintextBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __repr__(self) -> str:
        state = "wiped" if self._view is None else "live"
        return f"PlaintextBuffer(size={self._size}, {state})"
