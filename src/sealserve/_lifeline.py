"""Tie a child process's life to its parent's, even when the parent is SIGKILLed.

A parent that starts long-lived helpers (``sealserve up`` starting instance hosts and the TEE
platform daemon) hands each of them the read end of one pipe whose write end only the parent
holds.  When the parent dies, however it dies, the kernel closes the write end, the child sees
the pipe hang up, and it stops itself: SIGTERM first, so it shuts down cleanly, and a hard exit
if it has not ended after a grace period.  No orphan keeps running and holding ports, shared
memory or keys.

Parent::

    env = dict(os.environ)
    fd = tie_to_this_process(env)
    subprocess.Popen(command, env=env, pass_fds=(fd,), ...)

Child (done by ``sealserve``'s entry point): :func:`watch_inherited_lifeline`.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import MutableMapping
from typing import Final

__all__ = [
    "LIFELINE_ENV",
    "exit_when_closed",
    "tie_to_this_process",
    "watch_inherited_lifeline",
]

LIFELINE_ENV: Final = "SEALSERVE_LIFELINE_FD"
_EX_SOFTWARE: Final = 70
_HANGUP: Final = select.POLLHUP | select.POLLERR | select.POLLNVAL

_lock = threading.Lock()
_pipe: tuple[int, int] | None = None


def tie_to_this_process(env: MutableMapping[str, str]) -> int:
    """Prepare ``env`` for a child that must not outlive this process.

    Returns the descriptor to put in the child's ``pass_fds``.  The write end of the pipe
    stays in this process (not inheritable) until it exits.
    """
    global _pipe
    with _lock:
        if _pipe is None:
            _pipe = os.pipe()
        read_end = _pipe[0]
    env[LIFELINE_ENV] = str(read_end)
    return read_end


def exit_when_closed(fd: int, *, grace_s: float = 5.0, name: str = "lifeline") -> threading.Thread:
    """Watch ``fd`` (a pipe's read end or a socket) on a daemon thread; when its peer hangs
    up, send this process SIGTERM, then exit hard if it is still running ``grace_s`` later."""
    if grace_s < 0:
        raise ValueError(f"grace_s must be >= 0, got {grace_s!r}")
    thread = threading.Thread(
        target=_watch, args=(fd, grace_s), name=f"{name}-watchdog", daemon=True
    )
    thread.start()
    return thread


def watch_inherited_lifeline(*, grace_s: float = 5.0) -> bool:
    """If this process was started with a lifeline, watch it; returns whether it was.

    The variable is removed from the environment, so this process's own children do not
    inherit the parent's lifeline.
    """
    raw = os.environ.pop(LIFELINE_ENV, None)
    if raw is None:
        return False
    if not raw.isdigit():
        raise ValueError(f"{LIFELINE_ENV} must be a descriptor number, got {raw!r}")
    fd = int(raw)
    try:
        os.fstat(fd)
    except OSError as exc:
        raise ValueError(f"{LIFELINE_ENV}={fd} is not an open descriptor") from exc
    exit_when_closed(fd, grace_s=grace_s)
    return True


def _watch(fd: int, grace_s: float) -> None:
    poller = select.poll()
    poller.register(fd, _HANGUP)
    while not any(mask & _HANGUP for _, mask in poller.poll()):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(_EX_SOFTWARE)
