"""Stop inferences whose deadline passed: one thread for all of a runtime's runs.

onnxruntime stops a run between two kernels when its ``RunOptions.terminate`` is set (from any
thread); the run then raises.  :class:`Watchdog` keeps the runs under way by when they must
stop, sleeps until the earliest, and sets ``terminate`` on those whose time has come.  A run
that ends first cancels its entry.  So a request whose deadline passed stops computing within
a kernel's time instead of using the cores for as long as the input makes it run.

::

    with watchdog.watch(run_options, seconds=2.5) as fired:
        session.run(None, inputs, run_options)   # raises once terminated
    fired()                                       # whether the watchdog stopped it
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Watchdog"]


class Watchdog:
    """Sets ``terminate`` on run options whose time is up (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._runs: dict[int, tuple[Any, list[bool]]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, run_options: Any, *, seconds: float | None) -> Iterator[Callable[[], bool]]:
        """Terminate ``run_options``' run after ``seconds`` (never if ``None``); yields a
        function that says whether it did."""
        if seconds is None:
            yield lambda: False
            return
        key = next(self._ids)
        fired = [False]
        with self._cond:
            self._runs[key] = (run_options, fired)
            heapq.heappush(self._heap, (time.monotonic() + max(seconds, 0.0), key))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="inference-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            yield lambda: fired[0]
        finally:
            with self._cond:
                self._runs.pop(key, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._runs:
                    heapq.heappop(self._heap)  # a run that ended first
                if not self._heap:
                    self._cond.wait()
                    continue
                due, key = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                entry = self._runs.get(key)
                if entry is not None:
                    entry[0].terminate = True
                    entry[1][0] = True
