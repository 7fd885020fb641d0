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
import select
import signal
import sys
import threading
import time
from pathlib import Path

__all__ = ["main"]

_EX_SOFTWARE = 70
#: After the platform goes away, how long the entry has to shut down after SIGTERM.
_ORPHAN_GRACE_S = 5.0


def _exit_when_platform_goes(fd: int) -> None:
    """A measured process lives only as long as its platform: when the attestation channel
    hangs up (the platform, or the launcher embedding it, died or closed the handle), ask the
    entry to stop with SIGTERM, then end the process if it has not stopped in time."""
    poller = select.poll()
    poller.register(fd, select.POLLHUP | select.POLLERR)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
        if any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in events):
            break
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(_ORPHAN_GRACE_S)
    os._exit(_EX_SOFTWARE)


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
        threading.Thread(
            target=_exit_when_platform_goes, args=(int(tee_fd),), name="tee-watchdog", daemon=True
        ).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
