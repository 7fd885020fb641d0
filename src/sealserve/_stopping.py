"""Bounded stops: a stop step that does not end in time is abandoned, and what it should have
stopped is killed and named in the log.

A clean stop asks politely (an API call, SIGTERM) and waits.  The thing asked may be slow or
gone: a Ray Serve controller that is stopped or busy, a host that does not answer, a runtime
stuck in a system call.  Waiting for it forever is the bug (``sealserve up`` or ``platform ray
serve`` that never exits after Ctrl-C, a test fixture that never tears down).  So every step
runs with a bound (:func:`bounded`), and after the steps the processes that are still alive
are killed (:func:`kill_named`): each kill is one ``stop.killed`` log event with the pid and
what the process was, so an operator sees what did not stop cleanly.

:func:`descendants` lists a process's descendants from ``/proc`` (Linux), which is how a local
Ray's processes (its GCS, raylet, workers and the instance hosts its replicas started) are
found when Ray itself cannot stop them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

from sealserve._log import get_logger

__all__ = ["bounded", "children", "describe", "descendants", "kill_named", "wait_gone"]

_log = get_logger(__name__)
_PROC: Final = Path("/proc")
_NAME_CHARS: Final = 120


def bounded(step: str, fn: Callable[[], object], *, timeout_s: float) -> bool:
    """Run ``fn`` on a thread of its own for at most ``timeout_s``; whether it ended.

    An exception from ``fn`` ends it (logged, not raised: a stop goes on).  A step that did not
    end is logged (``stop.timed_out``) and left behind on its daemon thread; the caller then
    kills what that step should have stopped.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported below; a stop step must not kill the caller
            failure.append(exc)

    began = time.monotonic()
    thread = threading.Thread(target=run, name=f"stop-{step}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _log.event("stop.timed_out", level=logging.WARNING, step=step, bound_s=round(timeout_s, 3))
        return False
    if failure:
        _log.event(
            "stop.step_failed",
            level=logging.WARNING,
            step=step,
            error=type(failure[0]).__name__,
            detail=str(failure[0])[:200],
        )
    else:
        _log.event("stop.step_done", step=step, seconds=round(time.monotonic() - began, 3))
    return True


def describe(pid: int, *, proc: Path = _PROC) -> str | None:
    """What process ``pid`` is (its command line, shortened); ``None`` if it is gone."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    text = " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
    if not text:  # a zombie, or a kernel thread
        try:
            text = (proc / str(pid) / "comm").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        text = f"[{text.strip()}]"
    return text[:_NAME_CHARS]


def _parents(proc: Path) -> dict[int, int]:
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces and parentheses
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) >= 2 and fields[1].isdigit():
                parents[int(entry.name)] = int(fields[1])
    return parents


def children(pid: int, *, proc: Path = _PROC) -> set[int]:
    """The direct children of ``pid`` (empty where there is no ``/proc``)."""
    return {child for child, parent in _parents(proc).items() if parent == pid}


def descendants(roots: Iterable[int], *, proc: Path = _PROC) -> set[int]:
    """Every living descendant of ``roots`` (the roots not included)."""
    parents = _parents(proc)
    kids: dict[int, list[int]] = {}
    for child, parent in parents.items():
        kids.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in kids.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int, proc: Path) -> bool:
    try:
        state = (proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    fields = state.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def wait_gone(pids: Iterable[int], *, timeout_s: float, proc: Path = _PROC) -> set[int]:
    """Wait up to ``timeout_s`` for ``pids`` to end; those still alive."""
    left = {p for p in pids if _alive(p, proc)}
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in left if _alive(p, proc)}
    return left


def kill_named(pids: Mapping[int, str], *, reason: str, proc: Path = _PROC) -> list[int]:
    """SIGKILL every process of ``pids`` (pid -> what it is) that is still alive; each kill is
    logged as ``stop.killed`` with the pid, the name and ``reason``.  The pids killed."""
    killed: list[int] = []
    for pid, name in sorted(pids.items()):
        if pid == os.getpid() or not _alive(pid, proc):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed.append(pid)
        _log.event("stop.killed", level=logging.WARNING, pid=pid, process=name, reason=reason)
    return killed
