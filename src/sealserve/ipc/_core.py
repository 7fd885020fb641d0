"""Which implementation of a channel's hot path runs here: the compiled core or pure Python.

``sealserve.ipc._ringcore`` (C, built by the install when a compiler is there; see
``hatch_build.py``) implements the producer's ring and the consumer's reads, release marks and
spin, plus the futex calls, with the same interface and the same segment layout as the
pure-Python modules (:mod:`sealserve.ipc._ring`, :mod:`sealserve.ipc._subscriber`), which stay
as the reference and the fallback.  The two ends of a channel may run different cores.

The environment variable ``SEALSERVE_IPC_CORE`` picks one: ``auto`` (the default: the compiled
core when it is built), ``c`` (required: an error if it is not built) or ``python``.  Ends take
the core active when they are made; :func:`use` switches it (the conformance suite runs on
both).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from sealserve.ipc import _ring, _sys

if TYPE_CHECKING:
    from sealserve.ipc import _ringcore
    from sealserve.ipc._segment import Segment

__all__ = ["CORES", "active", "available", "compiled", "reader", "ring_class", "use"]

CORES = ("c", "python")


def _load() -> ModuleType | None:
    try:
        from sealserve.ipc import _ringcore
    except ImportError:  # built without a compiler, or a measured snapshot of .py files only
        return None
    return _ringcore


_compiled = _load()

# The raw calls the Python-level waits make; the compiled core has faster ones.
_SWAPPED = ("futex_wait", "futex_wake", "full_fence", "current_cpu")
_PYTHON_CALLS = {name: getattr(_sys, name) for name in _SWAPPED}
_active = "python"


def compiled() -> ModuleType | None:
    """The compiled module, or ``None`` where it was not built."""
    return _compiled


def available() -> tuple[str, ...]:
    """The cores this installation can run."""
    return CORES if _compiled is not None else ("python",)


def active() -> str:
    """The core new channel ends use: ``c`` or ``python``."""
    return _active


def use(core: str) -> None:
    """Make ``core`` (``c`` or ``python``) the one new channel ends use."""
    global _active
    if core not in CORES:
        raise ValueError(f"core must be one of {', '.join(CORES)}, got {core!r}")
    if core == "c" and _compiled is None:
        raise RuntimeError(
            "the compiled ipc core (sealserve.ipc._ringcore) is not built here; install with "
            "a C compiler and the Python headers (make install), or use the python core"
        )
    for name in _SWAPPED:
        setattr(_sys, name, getattr(_compiled, name) if core == "c" else _PYTHON_CALLS[name])
    _active = core


def ring_class() -> type[_ring.ProducerRing]:
    """The producer ring of the active core (both have :class:`_ring.ProducerRing`'s API)."""
    if _active == "c":
        return cast(type[_ring.ProducerRing], cast(Any, _compiled).ProducerRing)
    return _ring.ProducerRing


def reader(segment: Segment, slot: int, cursor: int) -> _ringcore.Reader | None:
    """The compiled consumer reads for ``slot`` of ``segment``, or ``None`` on the python core."""
    if _active != "c":
        return None
    return cast(Any, _compiled).Reader(segment, slot=slot, cursor=cursor)  # type: ignore[no-any-return]


def _from_environment() -> None:
    choice = os.environ.get("SEALSERVE_IPC_CORE", "auto")
    if choice == "auto":
        use("c" if _compiled is not None else "python")
    else:
        use(choice)


_from_environment()
