"""``sealserve bench ipc``: the shared-memory data plane against its baseline and its peers.

One run, producer and consumer in two processes pinned to two cores, message sizes from 64 B
to 16 MiB.  Every message is fully written by the producer and fully read and checked by the
consumer at ``memcpy``/``memcmp`` speed (:mod:`sealserve.bench._ipc_work`), whatever the
transport, so each does the same useful work; shared memory is faulted in up front on both
sides for every transport.  Transports: ``baseline`` (shm ring + memcpy in + memcpy out +
blocking futex, the paper's baseline), every sealserve mode under every QoS hint, and
``multiprocessing``, ``zmq`` and ``iceoryx2`` when importable.

For each transport and size: p50 and p99 one-way latency (one message in flight, from the
producer starting to send, before it asks for a buffer, to the consumer having checked; each
message is sent ``gap_us`` after the previous one was checked, 20 us by default, so that a
consumer that blocks is asleep when it comes, as between requests, while a spinning one is
still spinning), GB/s and messages/s (streaming), and CPU seconds per GB of both processes.
Cases run round-robin, ``repeats`` rounds; the figures are medians over rounds and the ratios
are medians of per-round ratios to the baseline of the same size in the same round, so that a
slow phase of a shared machine cancels out.
The JSON has ``results`` (one object per transport and size) and ``goals`` (each goal of the
issue, the best sealserve transport for it, the ratio and whether it was met).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sealserve.bench._common import (
    environment,
    interleaved,
    median,
    percentile,
    print_table,
    ratio,
    write_json,
)
from sealserve.bench._ipc_transports import available_transports
from sealserve.bench._ipc_worker import worker_main

__all__ = [
    "IPCBenchConfig",
    "register",
    "run_ipc_bench",
    "write_plot",
]

KIB: Final = 1024
MIB: Final = 1024 * KIB
SIZES: Final = (64, 4 * KIB, 64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB, 16 * MIB)
_CASE_TIMEOUT_S: Final = 60.0
_METRICS: Final = ("p50_us", "p99_us", "gb_per_s", "msgs_per_s", "cpu_s_per_gb")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IPCBenchConfig:
    """What one run measures, and for how long."""

    sizes: tuple[int, ...] = SIZES
    transports: tuple[str, ...] = ()  # empty: every available transport
    repeats: int = 5
    latency_budget_s: float = 0.12
    latency_min: int = 60
    throughput_budget_s: float = 0.25
    throughput_min: int = 24
    #: Pause before each latency message, after the previous one was checked (see the module).
    gap_us: float = 20.0
    #: Messages streamed (and checked) before the throughput phase, at most.
    warmup_max: int = 64

    @classmethod
    def quick(cls) -> IPCBenchConfig:
        """A run of under a minute: short phases, a short warm-up, three rounds."""
        return cls(
            repeats=3,
            latency_budget_s=0.006,
            latency_min=6,
            throughput_budget_s=0.01,
            throughput_min=5,
            warmup_max=4,
        )

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats!r}")
        if not self.sizes or any(s < 64 or s % 64 for s in self.sizes):
            raise ValueError(f"sizes must be multiples of 64 bytes, got {self.sizes!r}")
        if self.latency_budget_s <= 0 or self.throughput_budget_s <= 0:
            raise ValueError("phase budgets must be > 0")
        if not 0 <= self.gap_us <= 1e6:
            raise ValueError(f"gap_us must be within [0, 1e6], got {self.gap_us!r}")

    def selected(self) -> list[str]:
        names = available_transports()
        if not self.transports:
            return names
        chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in self.transports)]
        if "baseline" not in chosen:
            chosen.insert(0, "baseline")
        return chosen


def _depth(size: int) -> int:
    return max(4, min(64, (64 * MIB) // size))


def _case(config: IPCBenchConfig, transport: str, size: int) -> dict[str, Any]:
    big = size >= 4 * MIB
    depth = _depth(size)
    return {
        "transport": transport,
        "size": size,
        "depth": depth,
        "gap_us": config.gap_us,
        "lat_budget_s": config.latency_budget_s,
        "lat_min": max(2, config.latency_min // 3) if big else config.latency_min,
        "lat_max": 100_000,
        "lat_warmup": 1 if big else 2,
        "warmup": max(1, min(depth, config.warmup_max)),
        "tp_budget_s": config.throughput_budget_s,
        "tp_min": max(3, config.throughput_min // 2) if big else config.throughput_min,
        "tp_max": 1_000_000,
    }


class _Workers:
    """The producer and consumer processes, restarted after a failed case."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._cpus: tuple[int | None, int | None] = (
            (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
        )
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self.ack: Any = None
        self._start()

    def _start(self) -> None:
        ctx = self._ctx
        self.ack = ctx.RawArray("Q", 8)
        queue = ctx.Queue(maxsize=64)
        self._queue = queue
        self._procs, self._conns = [], []
        for role, cpu in zip(("producer", "consumer"), self._cpus, strict=True):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(role, child, self.ack, queue, cpu),
                name=f"sealserve-bench-ipc-{role}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)

    def run(self, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | str:
        self.ack[0] = 0
        producer, consumer = self._conns
        consumer.send(case)
        producer.send(case)
        results: dict[int, Any] = {}
        deadline = time.monotonic() + _CASE_TIMEOUT_S
        while len(results) < 2:
            left = deadline - time.monotonic()
            ready = multiprocessing.connection.wait(
                [c for i, c in enumerate(self._conns) if i not in results], timeout=max(left, 0)
            )
            if not ready:
                self.restart()
                return f"timed out after {_CASE_TIMEOUT_S:.0f}s"
            for conn in ready:
                i = self._conns.index(conn)
                try:
                    status, payload = self._conns[i].recv()
                except EOFError:
                    self.restart()
                    return "a worker process died"
                if status != "ok":
                    self.restart()
                    return str(payload).splitlines()[0]
                results[i] = payload
        return results[0], results[1]

    def restart(self) -> None:
        self.stop(force=True)
        self._start()

    def stop(self, *, force: bool = False) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if not force:
                with contextlib.suppress(OSError):
                    conn.send(None)
            proc.join(timeout=0 if force else 5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._queue.close()
        self._queue.join_thread()


def _metrics(case: dict[str, Any], prod: dict[str, Any], cons: dict[str, Any]) -> dict[str, float]:
    lat_us = [ns / 1e3 for ns in cons["latencies_ns"]]
    count = cons["tp_count"]
    wall_s = (cons["tp_end_ns"] - prod["tp_start_ns"]) / 1e9
    nbytes = count * case["size"]
    gb = nbytes / 1e9
    return {
        "p50_us": percentile(lat_us, 50),
        "p99_us": percentile(lat_us, 99),
        "gb_per_s": gb / wall_s if wall_s > 0 else math.nan,
        "msgs_per_s": count / wall_s if wall_s > 0 else math.nan,
        "cpu_s_per_gb": (prod["tp_cpu_s"] + cons["tp_cpu_s"]) / gb if gb > 0 else math.nan,
    }


def run_ipc_bench(
    config: IPCBenchConfig,
    *,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every case ``config.repeats`` times, interleaved; return the JSON document.

    ``elapsed_s`` is the wall-clock time of the whole run, workers' start and stop included
    (``--quick`` is meant to finish in under a minute).
    """
    started = time.monotonic()
    transports = config.selected()
    workers = _Workers()
    counter = [0]
    failures: dict[str, str] = {}
    reports: dict[tuple[str, int], Any] = {}

    def make(transport: str, size: int) -> Callable[[], dict[str, float] | None]:
        def run() -> dict[str, float] | None:
            counter[0] += 1
            where = workdir / f"c{counter[0]}"
            where.mkdir()
            case = _case(config, transport, size)
            case["where"] = str(where)
            out = workers.run(case)
            if isinstance(out, str):
                failures[f"{transport}@{size}"] = out
                return None
            report = out[0].get("report")
            if report is not None:
                reports[(transport, size)] = report  # the last round's: it learned the most
            return _metrics(case, *out)

        return run

    cases = {(t, s): make(t, s) for s in config.sizes for t in transports}
    try:
        samples = interleaved(
            cases, repeats=config.repeats, progress=lambda msg: progress and progress(msg)
        )
    finally:
        workers.stop()
    results = _aggregate(samples, transports, config)
    return {
        "benchmark": "ipc",
        "environment": environment(),
        "config": {
            **dataclasses.asdict(config),
            "transports": transports,
            "pinned_cpus": list(workers._cpus) if workers._cpus[0] is not None else None,
        },
        "results": results,
        "auto": [
            {"transport": t, "size_bytes": size, **report}
            for (t, size), report in sorted(reports.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ],
        "goals": _goals(results, config.sizes),
        "failures": failures,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _aggregate(
    samples: dict[tuple[str, int], list[dict[str, float] | None]],
    transports: Sequence[str],
    config: IPCBenchConfig,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for size in config.sizes:
        base_rounds = samples.get(("baseline", size), [])
        for transport in transports:
            rounds = samples[(transport, size)]
            row: dict[str, Any] = {"transport": transport, "size_bytes": size}
            ok = [r for r in rounds if r is not None]
            for key in _METRICS:
                row[key] = median(r[key] for r in ok)
            for key in _METRICS:
                per_round = [
                    ratio(r[key], b[key])
                    for r, b in zip(rounds, base_rounds, strict=False)
                    if r is not None and b is not None
                ]
                row[f"ratio_{key}"] = median(v for v in per_round if not math.isnan(v))
            row["rounds"] = len(ok)
            out.append(row)
    return out


def _goal(
    goal: str, size: int, transport: str, value: float, target: str, met: bool
) -> dict[str, Any]:
    return {
        "goal": goal,
        "size_bytes": size,
        "transport": transport,
        "value": value,
        "target": target,
        "met": bool(met),
    }


def _goals(results: list[dict[str, Any]], sizes: Sequence[int]) -> list[dict[str, Any]]:
    by: dict[tuple[str, int], dict[str, Any]] = {
        (r["transport"], r["size_bytes"]): r for r in results
    }
    ours = sorted({r["transport"] for r in results if r["transport"].startswith("sealserve-")})
    goals: list[dict[str, Any]] = []

    def best(size: int, key: str, names: Sequence[str], *, high: bool) -> tuple[str, float]:
        vals = [(n, by[(n, size)][key]) for n in names if (n, size) in by]
        vals = [(n, v) for n, v in vals if not math.isnan(v)]
        if not vals:
            return "-", math.nan
        return (max if high else min)(vals, key=lambda nv: nv[1])

    loans = [n for n in ours if n.split("-")[1] in ("loan", "stream")]
    for size in sizes:
        if size == 4 * KIB or 64 * KIB <= size <= 16 * MIB:
            target = 2.1 if size >= 64 * KIB else 1.0
            name, value = best(size, "ratio_gb_per_s", loans, high=True)
            goals.append(
                _goal(
                    "loans: throughput vs baseline",
                    size,
                    name,
                    value,
                    f">= {target}x",
                    value >= target,
                )
            )
        if 64 * KIB <= size <= 16 * MIB:
            cpu_name, cpu = best(size, "ratio_cpu_s_per_gb", loans, high=False)
            goals.append(
                _goal("loans: CPU s/GB vs baseline", size, cpu_name, cpu, "<= 0.5x", cpu <= 0.5)
            )
        if size <= 64 * KIB:
            latency = [n for n in ours if n.endswith("-latency")]
            name, value = best(size, "ratio_p50_us", latency, high=False)
            goals.append(
                _goal("p50 vs baseline, latency hint", size, name, value, "<= 0.28x", value <= 0.28)
            )
        if size == 64:
            name, value = best(size, "ratio_gb_per_s", ours, high=True)
            goals.append(
                _goal("throughput vs baseline", size, name, value, ">= 1.0x", value >= 1.0)
            )
        if size in (4 * MIB, 16 * MIB):
            name, value = best(size, "ratio_p50_us", ours, high=False)
            goals.append(_goal("p50 vs baseline", size, name, value, "<= 0.5x", value <= 0.5))
        for hint in ("latency", "efficiency", "throughput"):
            auto = f"sealserve-auto-{hint}"
            fixed = [f"sealserve-{m}-{hint}" for m in ("copy", "offload", "pipelined")]
            if (auto, size) not in by:
                continue
            fixed_name, fixed_best = best(size, "ratio_gb_per_s", fixed, high=True)
            if fixed_name == "-":
                continue
            value = by[(auto, size)]["ratio_gb_per_s"] / fixed_best
            goals.append(
                _goal(
                    f"auto vs best fixed send mode ({fixed_name.split('-')[1]}), {hint}",
                    size,
                    auto,
                    value,
                    ">= 0.9x",
                    value >= 0.9,
                )
            )
        name, ours_p50 = best(size, "p50_us", ours, high=False)
        for peer in ("zmq", "multiprocessing"):
            if (peer, size) in by:
                theirs = by[(peer, size)]["p50_us"]
                goals.append(
                    _goal(
                        f"p50 below {peer}",
                        size,
                        name,
                        ours_p50 / theirs,
                        "< 1.0x",
                        ours_p50 < theirs,
                    )
                )
        if ("iceoryx2", size) in by:
            iox = by[("iceoryx2", size)]
            if size >= 1 * MIB:
                tp_name, tp = best(size, "gb_per_s", ours, high=True)
                goals.append(
                    _goal(
                        "throughput vs iceoryx2",
                        size,
                        tp_name,
                        tp / iox["gb_per_s"],
                        ">= 1.0x",
                        tp >= iox["gb_per_s"],
                    )
                )
            if size <= 64 * KIB:
                goals.append(
                    _goal(
                        "p50 below iceoryx2",
                        size,
                        name,
                        ours_p50 / iox["p50_us"],
                        "< 1.0x",
                        ours_p50 < iox["p50_us"],
                    )
                )
    return goals


def _size_label(size: int) -> str:
    if size >= MIB:
        return f"{size // MIB} MiB"
    if size >= KIB:
        return f"{size // KIB} KiB"
    return f"{size} B"


def _print(doc: dict[str, Any], console: Console) -> None:
    rows_by_size: dict[int, list[dict[str, Any]]] = {}
    for row in doc["results"]:
        rows_by_size.setdefault(row["size_bytes"], []).append(row)
    for size, rows in rows_by_size.items():
        print_table(
            f"ipc, {_size_label(size)} messages (ratios: per-round medians against baseline)",
            [
                "transport",
                "p50 us",
                "p99 us",
                "GB/s",
                "msgs/s",
                "CPU s/GB",
                "p50 x",
                "GB/s x",
                "CPU x",
            ],
            [
                [
                    r["transport"],
                    r["p50_us"],
                    r["p99_us"],
                    r["gb_per_s"],
                    r["msgs_per_s"],
                    r["cpu_s_per_gb"],
                    r["ratio_p50_us"],
                    r["ratio_gb_per_s"],
                    r["ratio_cpu_s_per_gb"],
                ]
                for r in rows
            ],
            console=console,
        )
    if doc.get("auto"):
        print_table(
            "auto: the path the scheduler chose per size, hint and regime, and why",
            ["transport", "size", "regime", "chose", "why", "decisions (last round)"],
            [row for a in doc["auto"] for row in _auto_rows(a)],
            console=console,
        )
    print_table(
        "goals (best sealserve transport per goal)",
        ["goal", "size", "transport", "value", "target", "met"],
        [
            [
                g["goal"],
                _size_label(g["size_bytes"]),
                g["transport"],
                g["value"],
                g["target"],
                "yes" if g["met"] else "NO",
            ]
            for g in doc["goals"]
        ],
        console=console,
    )
    for case, why in doc["failures"].items():
        console.print(f"[red]failed[/red] {case}: {why}")
    if "elapsed_s" in doc:
        console.print(f"elapsed: {doc['elapsed_s']:.1f} s")


def _auto_rows(report: dict[str, Any]) -> list[list[Any]]:
    decisions = report.get("decisions", {})
    counts = ", ".join(f"{k} {v}" for k, v in sorted(decisions.items()))
    head = [report["transport"], _size_label(report["size_bytes"])]
    if not report.get("learned"):
        chosen = max(decisions, key=decisions.get) if decisions else "-"
        why = "cost model: below every size where another path could pay; nothing to measure"
        return [[*head, "any", chosen, why, counts]]
    return [[*head, c["regime"], c["chosen"], c["why"], counts] for c in report["learned"]]


_PLOTTED: Final = (
    "baseline",
    "reference",
    "multiprocessing",
    "zmq",
    "iceoryx2",
    "sealserve-copy-latency",
    "sealserve-loan-latency",
    "sealserve-stream-latency",
    "sealserve-loan-throughput",
    "sealserve-auto-efficiency",
)


def write_plot(doc: dict[str, Any], path: Path) -> Path:
    """A PNG of latency, throughput and CPU per GB against message size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("p50_us", "p50 one-way latency (us, lower is better)", True),
        ("gb_per_s", "throughput (GB/s, higher is better)", True),
        ("cpu_s_per_gb", "CPU seconds per GB, both processes (lower is better)", True),
    )
    sizes = sorted({r["size_bytes"] for r in doc["results"]})
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    present = {r["transport"] for r in doc["results"]}
    for ax, (key, title, log_y) in zip(axes, panels, strict=True):
        for name in _PLOTTED:
            if name not in present:
                continue
            rows = sorted(
                (r for r in doc["results"] if r["transport"] == name), key=lambda r: r["size_bytes"]
            )
            xs = [r["size_bytes"] for r in rows]
            ys = [r[key] for r in rows]
            style = (
                "k-o" if name == "baseline" else ("-s" if name.startswith("sealserve") else "--^")
            )
            ax.plot(
                xs, ys, style, label=name, linewidth=2 if name == "baseline" else 1.3, markersize=4
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [_size_label(n) for n in sizes], rotation=45)
        ax.minorticks_off()
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("message size")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("sealserve bench ipc: producer and consumer on two cores (medians of rounds)")
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _parse_sizes(text: str) -> tuple[int, ...]:
    units = {"": 1, "B": 1, "K": KIB, "KIB": KIB, "M": MIB, "MIB": MIB}
    out = []
    for part in text.split(","):
        item = part.strip().upper()
        digits = item.rstrip("KIMB")
        unit = item[len(digits) :]
        if not digits.isdigit() or unit not in units:
            raise typer.BadParameter(f"not a size: {part.strip()!r} (use e.g. 64,4K,1M)")
        out.append(int(digits) * units[unit])
    return tuple(out)


def _ipc(
    quick: Annotated[
        bool, typer.Option("--quick", help="Short phases and 3 rounds: under a minute.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON to this file.")
    ] = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG plot to this file.")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option("--repeats", help="Interleaved rounds (default 5; 3 quick).")
    ] = None,
    sizes: Annotated[
        str | None, typer.Option("--sizes", help="Comma-separated sizes, e.g. 64,4K,1M.")
    ] = None,
    gap_us: Annotated[
        float | None,
        typer.Option("--gap-us", help="Pause before each latency message (default 20 us)."),
    ] = None,
    transports: Annotated[
        str | None,
        typer.Option(
            "--transports",
            help="Comma-separated names or patterns (e.g. 'sealserve-loan-*,zmq'); "
            "baseline is always included.",
        ),
    ] = None,
) -> None:
    """Shared-memory IPC: sealserve modes x QoS vs baseline, multiprocessing, zmq, iceoryx2."""
    config = IPCBenchConfig.quick() if quick else IPCBenchConfig()
    try:
        changes: dict[str, Any] = {}
        if repeats is not None:
            changes["repeats"] = repeats
        if sizes is not None:
            changes["sizes"] = _parse_sizes(sizes)
        if gap_us is not None:
            changes["gap_us"] = gap_us
        if transports is not None:
            changes["transports"] = tuple(t.strip() for t in transports.split(",") if t.strip())
        config = dataclasses.replace(config, **changes)
    except (ValueError, typer.BadParameter) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    unknown = [
        p
        for p in config.transports
        if not any(fnmatch.fnmatch(n, p) for n in available_transports())
    ]
    if unknown:
        typer.echo(
            f"error: no transport matches {', '.join(unknown)}; available: "
            f"{', '.join(available_transports())}",
            err=True,
        )
        raise typer.Exit(2)
    console = Console(stderr=True)
    total = config.repeats * len(config.sizes) * len(config.selected())
    with (
        tempfile.TemporaryDirectory(prefix="sealserve-bench-ipc-") as tmp,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar,
    ):
        task = bar.add_task("starting workers", total=total)

        def advance(message: str) -> None:
            bar.update(task, advance=1, description=message)

        doc = run_ipc_bench(config, workdir=Path(tmp), progress=advance)
    out = Console(width=max(Console().width, 132))
    _print(doc, out)
    if json_path is not None:
        write_json(json_path, doc)
        out.print(f"wrote {json_path}")
    if plot_path is not None:
        write_plot(doc, plot_path)
        out.print(f"wrote {plot_path}")


def register(app: typer.Typer) -> None:
    """Add ``ipc`` to the ``sealserve bench`` group."""
    app.command("ipc")(_ipc)
