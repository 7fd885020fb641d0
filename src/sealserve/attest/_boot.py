"""The bootstrap of a measured launch, run from inside the platform's code snapshot.

The platform starts ``python -I -B -c BOOT_COMMAND <snapshot> <module> [args...]``; the
command puts the snapshot first on ``sys.path`` and calls :func:`main`, which checks that
sealserve really is imported from the snapshot and runs the entry module as ``__main__``.
A watchdog thread ends the process when its platform goes away, so no measured process
outlives the platform that vouches for it (not even after a SIGKILL of the launcher).
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
    if tee_fd.isdigit():
        exit_when_closed(int(tee_fd), name="tee")
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
