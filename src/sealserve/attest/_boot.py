"""The bootstrap of a measured launch, run from inside the platform's code snapshot.

The platform starts ``python -I -B -c BOOT_COMMAND <snapshot> <module> [args...]``; the
command puts the snapshot first on ``sys.path`` and calls :func:`main`, which checks that
sealserve really is imported from the snapshot and runs the entry module as ``__main__``.
A watchdog thread ends the process when its platform goes away, so no measured process
outlives the platform that vouches for it (not even after a SIGKILL of the launcher).  In a
Gramine enclave (the manifest fixes ``SEALSERVE_TEE_BACKEND=gramine`` and the argv without
arguments) the entry's arguments come from ``SEALSERVE_ENTRY_ARGS``.

Started as a *template* (``SEALSERVE_TEE_TEMPLATE=1``, which only the platform sets; see
:mod:`sealserve.attest._templates`) it imports the entry module, runs its
``prepare_template()`` hook if it has one, and then serves fork requests on its channel
instead: each child gets its own attestation channel and passed descriptors, and runs the
entry as ``__main__`` exactly as a fresh launch does.  The template ends when its channel
closes (the platform went away or dropped it).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from sealserve._lifeline import exit_when_closed

__all__ = ["main"]

_EX_SOFTWARE = 70


def main() -> None:
    if len(sys.argv) < 3:
        sys.stderr.write("sealserve boot: usage: <snapshot> <module> [args...]\n")
        raise SystemExit(_EX_SOFTWARE)
    snapshot, module, args = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3:]
    import sealserve
    from sealserve.attest._entries import ENTRIES

    origin = Path(sealserve.__file__).resolve()
    if snapshot not in origin.parents:
        sys.stderr.write(
            f"sealserve boot: sealserve was imported from {origin}, not the snapshot\n"
        )
        raise SystemExit(_EX_SOFTWARE)
    if module not in ENTRIES.values():
        sys.stderr.write(f"sealserve boot: {module!r} is not a registered entry\n")
        raise SystemExit(_EX_SOFTWARE)
    tee_fd = os.environ.get("SEALSERVE_TEE_FD", "")
    if os.environ.pop("SEALSERVE_TEE_TEMPLATE", "") == "1" and tee_fd.isdigit():
        raise SystemExit(_serve_template(module, int(tee_fd)))
    if tee_fd.isdigit():
        exit_when_closed(int(tee_fd), name="tee")
    if not args and os.environ.get("SEALSERVE_TEE_BACKEND") == "gramine":
        args = _enclave_args()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _enclave_args() -> list[str]:
    """Inside a Gramine enclave the manifest fixes ``loader.argv`` (the host cannot choose the
    module); the entry's unmeasured arguments arrive in ``SEALSERVE_ENTRY_ARGS`` (a JSON list
    of strings), which the manifest passes through (:mod:`sealserve.attest._gramine_launcher`)."""
    import json

    text = os.environ.pop("SEALSERVE_ENTRY_ARGS", "") or "[]"
    try:
        args = json.loads(text)
    except ValueError:
        args = None
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        sys.stderr.write("sealserve boot: SEALSERVE_ENTRY_ARGS is not a JSON list of strings\n")
        raise SystemExit(_EX_SOFTWARE)
    return args


def _serve_template(module: str, control_fd: int) -> int:
    """Import ``module``, prepare it, and fork launches of it on request (single-threaded:
    no watchdog thread here, the fork server's loop sees its channel close)."""
    import importlib
    import socket

    from sealserve._forkserver import ForkRequest, serve_forks

    loaded = importlib.import_module(module)
    prepare = getattr(loaded, "prepare_template", None)
    if callable(prepare):
        prepare()
    control = socket.socket(fileno=control_fd)

    def run_child(request: ForkRequest) -> int:
        channel, *passed = request.fds  # 3, then 4, 5, ...
        os.environ["SEALSERVE_TEE_FD"] = str(channel)
        os.environ["SEALSERVE_PASSED_FDS"] = ",".join(str(fd) for fd in passed)
        exit_when_closed(channel, name="tee")
        sys.argv = [module, *request.args]
        sys.modules.pop(module, None)  # run as ``__main__`` afresh, as a fresh launch does
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0

    return serve_forks(control, run_child)
