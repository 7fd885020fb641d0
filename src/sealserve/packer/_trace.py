"""Request traces: a CSV of ``timestamp_s,model`` with an optional ``duration_ms``.

::

    timestamp_s,model,duration_ms
    0.000,resnet50,
    0.120,bert-base,151.5
    0.125,my-private-model,

``timestamp_s`` is seconds from the start of the trace (finite, >= 0; rows may come in any
order and are sorted, ties keeping file order); ``model`` is any non-empty name;
``duration_ms``, when given, is that request's inference time and overrides the cost model.
Every error names the file, the line, the column and the value.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Trace", "TraceRequest", "parse_trace_csv", "read_trace_csv", "write_trace_csv"]

_REQUIRED = ("timestamp_s", "model")
_OPTIONAL = ("duration_ms",)


@dataclasses.dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: when it arrives, which model, and its own inference time."""

    arrival_s: float
    model: str
    duration_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Trace:
    """Requests in arrival order, and where they came from."""

    requests: tuple[TraceRequest, ...]
    name: str = "trace"

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError(f"trace {self.name!r} has no requests")
        ordered = tuple(sorted(self.requests, key=lambda r: r.arrival_s))
        object.__setattr__(self, "requests", ordered)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def models(self) -> tuple[str, ...]:
        """The models named, most requested first (ties by name)."""
        counts = Counter(r.model for r in self.requests)
        return tuple(sorted(counts, key=lambda m: (-counts[m], m)))

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    def summary(self) -> dict[str, Any]:
        """What a reader needs to judge the trace: size, rates, skew and burstiness."""
        counts = Counter(r.model for r in self.requests)
        ranked = sorted(counts.values(), reverse=True)
        top = max(1, math.ceil(len(ranked) * 0.2))
        per_model_cv = {
            m: _iat_cv([r.arrival_s for r in self.requests if r.model == m]) for m in counts
        }
        finite = [v for v in per_model_cv.values() if not math.isnan(v)]
        return {
            "name": self.name,
            "requests": len(self.requests),
            "models": len(counts),
            "duration_s": round(self.duration_s, 3),
            "mean_rate_per_s": round(len(self.requests) / max(self.duration_s, 1e-9), 4),
            "top_20pct_models_share": round(sum(ranked[:top]) / len(self.requests), 4),
            "requests_per_model": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "median_interarrival_cv": round(_median(finite), 3) if finite else None,
            "with_duration": sum(1 for r in self.requests if r.duration_s is not None),
        }


def _iat_cv(times: Sequence[float]) -> float:
    if len(times) < 3:
        return math.nan
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    if mean <= 0:
        return math.nan
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    return math.sqrt(var) / mean


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def parse_trace_csv(lines: Iterable[str], *, source: str = "<trace>") -> Trace:
    """Parse trace CSV text; every error says where (``source``, line, column) and what."""
    reader = csv.reader(lines)
    header: list[str] | None = None
    requests: list[TraceRequest] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            _check_header(header, source, line)
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{source} line {line}: expected {len(header)} fields "
                f"({','.join(header)}), got {len(row)}: {','.join(row)!r}"
            )
        cells = dict(zip(header, (c.strip() for c in row), strict=True))
        stamp = _number(cells["timestamp_s"], source, line, "timestamp_s")
        if stamp < 0:
            raise ValueError(
                f"{source} line {line}, column 'timestamp_s': value {cells['timestamp_s']!r} "
                "is negative; timestamps are seconds from the start of the trace"
            )
        model = cells["model"]
        if not model:
            raise ValueError(f"{source} line {line}, column 'model': the model name is empty")
        duration: float | None = None
        raw = cells.get("duration_ms", "")
        if raw:
            ms = _number(raw, source, line, "duration_ms")
            if ms <= 0:
                raise ValueError(
                    f"{source} line {line}, column 'duration_ms': value {raw!r} must be > 0 "
                    "(or empty to use the cost model)"
                )
            duration = ms / 1000.0
        requests.append(TraceRequest(stamp, model, duration))
    if header is None:
        raise ValueError(f"{source}: empty; expected a header line 'timestamp_s,model'")
    if not requests:
        raise ValueError(f"{source}: has a header but no requests")
    return Trace(tuple(requests), name=source)


def _check_header(header: list[str], source: str, line: int) -> None:
    allowed = (*_REQUIRED, *_OPTIONAL)
    for col in header:
        if col not in allowed:
            raise ValueError(
                f"{source} line {line}: unknown column {col!r}; "
                f"the columns are {', '.join(_REQUIRED)} and optionally {', '.join(_OPTIONAL)}"
            )
    for col in set(header):
        if header.count(col) > 1:
            raise ValueError(f"{source} line {line}: column {col!r} appears twice")
    for col in _REQUIRED:
        if col not in header:
            raise ValueError(f"{source} line {line}: missing the column {col!r}")


def _number(raw: str, source: str, line: int, column: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{source} line {line}, column {column!r}: value {raw!r} is not a number"
        ) from None
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{source} line {line}, column {column!r}: value {raw!r} is not finite")
    return value


def read_trace_csv(path: str | os.PathLike[str]) -> Trace:
    """Read a trace file (see the module documentation for the format)."""
    target = Path(path)
    try:
        with target.open(newline="", encoding="utf-8") as fh:
            return parse_trace_csv(fh, source=str(target))
    except FileNotFoundError:
        raise ValueError(f"trace file '{target}' does not exist") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"trace file '{target}' is not UTF-8 text: {exc}") from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ValueError(f"trace file '{target}' cannot be read: {exc.strerror or exc}") from exc


def write_trace_csv(trace: Trace, path: str | os.PathLike[str] | None = None) -> str:
    """The trace as CSV text (written to ``path`` when given); it reads back the same."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    with_duration = any(r.duration_s is not None for r in trace.requests)
    writer.writerow(["timestamp_s", "model", *(["duration_ms"] if with_duration else [])])
    for r in trace.requests:
        row = [repr(r.arrival_s), r.model]
        if with_duration:
            row.append("" if r.duration_s is None else repr(r.duration_s * 1000.0))
        writer.writerow(row)
    text = buf.getvalue()
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
