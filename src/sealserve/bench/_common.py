"""What every benchmark shares: interleaved repeats, medians, percentiles, tables and JSON.

The rule of the house: a benchmark measures its baseline in the same run, interleaves the
repeats of every case (so that a noisy neighbour hurts all cases alike), reports medians, and
prints ratios to the baseline.  Absolute times are printed for reading, never for gating.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

__all__ = [
    "Stopwatch",
    "environment",
    "exit_on_sigterm",
    "interleaved",
    "median",
    "percentile",
    "print_table",
    "ratio",
    "write_json",
]

_K = TypeVar("_K")
_V = TypeVar("_V")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; ``nan`` for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q!r}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(ordered[lo])
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def median(values: Iterable[float]) -> float:
    items = list(values)
    return float(statistics.median(items)) if items else math.nan


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``, or ``nan`` when the baseline is zero or missing."""
    if not baseline or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return value / baseline


def interleaved(
    cases: Mapping[_K, Callable[[], _V]],
    *,
    repeats: int,
    progress: Callable[[str], None] | None = None,
) -> dict[_K, list[_V]]:
    """Run every case once per round, ``repeats`` rounds, and collect each case's results.

    Round-robin order means a slow phase of the machine lands on every case rather than on
    one; take the median of each list.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    out: dict[_K, list[_V]] = {key: [] for key in cases}
    for round_no in range(repeats):
        for key, fn in cases.items():
            if progress is not None:
                progress(f"round {round_no + 1}/{repeats}: {key}")
            out[key].append(fn())
    return out


class Stopwatch:
    """Wall and CPU time (this process) of a block: ``with Stopwatch() as sw: ...``."""

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._wall0 = 0.0
        self._cpu0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_s = time.process_time() - self._cpu0


def environment() -> dict[str, Any]:
    """What a reader needs to interpret the figures: machine, Python, library versions."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for dist in ("sealserve", "numpy", "onnxruntime", "cryptography"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "unix_time": int(time.time()),
    }


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON (NaN becomes null), creating parent directories."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(_nan_to_none(data), indent=2, sort_keys=False) + "\n")
    tmp.replace(target)
    return target


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    console: Console | None = None,
) -> None:
    """Print a table; floats get three significant figures, ``nan`` prints as a dash."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_fmt(cell) for cell in row))
    (console or Console()).print(table)


def _fmt(cell: Any) -> str:
    if isinstance(cell, float):
        if math.isnan(cell):
            return "-"
        if cell == 0:
            return "0"
        if abs(cell) >= 100:
            return f"{cell:,.0f}"
        return f"{cell:.3g}"
    return str(cell)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that a benchmark's ``finally`` blocks run (a
    throwaway PostgreSQL server, a tmpfs mount: nothing else would stop them)."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda _n, _f: sys.exit(143))
