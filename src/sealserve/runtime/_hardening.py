"""Keep the runtime's memory out of core dumps and out of other processes' reach.

The runtime holds keys, models, inputs and outputs in the clear.  A core dump would write them
to a file of the host's choosing, and a process that is *dumpable* lets any process of the same
user read its memory (``/proc/<pid>/mem``, ``ptrace``).  :func:`harden_process` makes the
runtime not dumpable (``PR_SET_DUMPABLE`` 0: no core dump, ``/proc/<pid>`` owned by root, no
``ptrace`` attach without ``CAP_SYS_PTRACE``) and sets its core limit to 0, soft and hard, so
a later ``setrlimit`` cannot raise it.  Both are the runtime's own calls at start, in the
measured code, not the host's choice.  On a TEE the memory is encrypted anyway; this is what
the simulated platform and the runtime's host-side view rely on.

:func:`process_protection` reads back what holds now (the runtime's stats carry it).
"""

from __future__ import annotations

import ctypes
import resource
import sys
from typing import Any, Final

__all__ = ["harden_process", "process_protection"]

_PR_SET_DUMPABLE: Final = 4
_PR_GET_DUMPABLE: Final = 3


def _prctl() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def harden_process() -> None:
    """No core dumps, not dumpable.  ``OSError`` if the kernel refuses (the runtime then does
    not start: it would serve with its memory readable)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return
    if _prctl()(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "prctl(PR_SET_DUMPABLE, 0) failed")


def process_protection() -> dict[str, Any]:
    """``{"dumpable", "core_limit"}`` as they hold now (``dumpable`` is ``None`` off Linux)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    dumpable = (
        bool(_prctl()(_PR_GET_DUMPABLE, 0, 0, 0, 0)) if sys.platform.startswith("linux") else None
    )
    return {"dumpable": dumpable, "core_limit": [soft, hard]}
