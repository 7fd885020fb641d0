"""``sealserve bench soak``: a long steady mixed load, and whether anything grows.

The fault benchmark's stack without the faults (:class:`~sealserve.bench._fault_stack.FaultStack`:
the TEE daemon in this process, two KeyService replicas, the gateway with the local platform,
three models of three sizes, three users) under a steady load of client threads for
``--duration-s`` (30 minutes by default; not part of CI).  Every ``--sample-s`` (10 s) it reads,
for every process of the stack (this process, the gateway, the KeyService replicas, every
instance host and runtime), its resident memory and its open descriptors, and the
shared-memory segments in ``/dev/shm`` nobody maps.

The verdict, per process that lived through the run: *flat* when, between the median of the
first fifth of its samples after the warm-up and the median of the last fifth, its resident
memory grew by less than ``max(8 MB, 5 %)`` and its descriptors by at most 2 (connections
come and go; the servers' database pools and their clients' keep-alive connections are not
counted); and no request
failed or was lost, and no segment was left.  Figures on a busy machine wander; the samples
are in the JSON for a closer look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

from sealserve.bench._common import environment, exit_on_sigterm, print_table, write_json
from sealserve.bench._fault_stack import FaultStack, zygotes
from sealserve.bench._load import SteadyLoad
from sealserve.bench._postgres import ThrowawayPostgres, postgres_bindir
from sealserve.bench.faults import _jobs

__all__ = ["SoakConfig", "register", "run_soak"]

_RSS_SLACK_MB: Final = 8.0
_RSS_SLACK_FRACTION: Final = 0.05
#: Connections a process holds for clients come and go; a leak grows without end.
_FD_SLACK: Final = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoakConfig:
    duration_s: float = 1800.0
    sample_s: float = 10.0
    warmup_s: float = 60.0
    concurrency: int = 6
    postgres: bool = True


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)


def _label(pid: int, cmd: str, stack: FaultStack) -> str:
    if stack.gateway is not None and pid == stack.gateway.pid:
        return "gateway"
    for i, ks in enumerate(stack.keyservices):
        if ks is not None and pid == int(ks.process.pid):
            return f"keyservice-{i}"
    full = _cmdline(pid) or cmd
    if "instance serve" in full:
        return f"instance-host-{pid}"
    if "instance zygote" in full:  # the gateway's host template, or a host forked from it
        template = stack.gateway is not None and pid in zygotes(stack.gateway.pid)
        return f"zygote-{pid}" if template else f"instance-host-{pid}"
    return f"runtime-{pid}" if "sealserve.runtime" in full else f"process-{pid}"


def _sample(stack: FaultStack, began: float) -> dict[str, Any]:
    census = stack.census()
    held = census.fds  # the server roles' descriptors less pools and clients' connections
    procs: dict[str, dict[str, float | int | None]] = {
        "bench": {"pid": os.getpid(), "rss_mb": _rss_mb(os.getpid()), "fds": held.get("bench")}
    }
    for pid, cmd in census.processes.items():
        rss = _rss_mb(pid)
        if rss is None:
            continue
        label = _label(pid, cmd, stack)
        fds = held.get(label, _fds(pid))
        procs[label] = {"pid": pid, "rss_mb": round(rss, 2), "fds": fds}
    return {"t": round(time.monotonic() - began, 1), "processes": procs, "shm": len(census.shm)}


def _verdict(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    after = [s for s in samples if s["t"] >= warmup_s]
    out: dict[str, dict[str, Any]] = {}
    if len(after) < 5:
        return out
    fifth = max(1, len(after) // 5)
    first, last = after[:fifth], after[-fifth:]
    for label in sorted(after[0]["processes"]):
        series_first = [s["processes"][label] for s in first if label in s["processes"]]
        series_last = [s["processes"][label] for s in last if label in s["processes"]]
        if len(series_first) < fifth or len(series_last) < fifth:
            continue  # it did not live through the run (an instance replaced: its own series)
        if series_first[0]["pid"] != series_last[-1]["pid"]:
            continue
        rss0 = statistics.median(float(p["rss_mb"]) for p in series_first)
        rss1 = statistics.median(float(p["rss_mb"]) for p in series_last)
        fd0 = statistics.median(int(p["fds"] or 0) for p in series_first)
        fd1 = statistics.median(int(p["fds"] or 0) for p in series_last)
        slack = max(_RSS_SLACK_MB, _RSS_SLACK_FRACTION * rss0)
        out[label] = {
            "rss_first_mb": round(rss0, 1),
            "rss_last_mb": round(rss1, 1),
            "rss_growth_mb": round(rss1 - rss0, 1),
            "fds_first": fd0,
            "fds_last": fd1,
            "flat": rss1 - rss0 < slack and fd1 <= fd0 + _FD_SLACK,
        }
    return out


def run_soak(
    config: SoakConfig, *, root: Path | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    workdir = Path(tempfile.mkdtemp(prefix="sssoak-", dir=root))
    pg = ThrowawayPostgres().start() if config.postgres and postgres_bindir() else None
    env = {
        "SEALSERVE_PLATFORM_KEEP_ALIVE_S": "600",
        "SEALSERVE_PLATFORM_MAX_INSTANCES": "3",
        "SEALSERVE_PLATFORM_INSTANCE_CONCURRENCY": "4",
    }
    stack = FaultStack(workdir / "stack", db_url=pg.url if pg else "", gateway_env=env)
    samples: list[dict[str, Any]] = []
    load: SteadyLoad | None = None
    try:
        say("starting the stack")
        stack.open()
        url = stack.start_gateway()
        jobs, _ = _jobs(stack, users=3)
        load = SteadyLoad(url, jobs, concurrency=config.concurrency, keep=10_000)
        began = time.monotonic()
        load.start()
        end = began + config.duration_s
        next_at = began
        while time.monotonic() < end:
            samples.append(_sample(stack, began))
            if len(samples) % 30 == 0:
                say(f"{samples[-1]['t']:.0f} s: {len(load.records())} requests answered")
            next_at += config.sample_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        load.stop()
        samples.append(_sample(stack, began))
        counts = dict(load.counts)
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                load.stop(timeout_s=30)
        stack.close()
        if pg is not None:
            pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
    verdict = _verdict(samples, config.warmup_s)
    return {
        "benchmark": "soak",
        "environment": environment(),
        "config": dataclasses.asdict(config),
        "requests": {
            "requests": sum(counts.get(k, 0) for k in ("ok", "retryable", "failed", "lost")),
            **{k: counts.get(k, 0) for k in ("ok", "retryable", "failed", "lost", "retried")},
            "errors": {k[6:]: v for k, v in counts.items() if k.startswith("error:")},
        },
        "verdict": verdict,
        "flat": all(v["flat"] for v in verdict.values()),
        "shm_left": samples[-1]["shm"] if samples else 0,
        "samples": samples,
    }


def register(app: typer.Typer) -> None:
    @app.command("soak")
    def soak_command(
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write the results here as JSON.")
        ] = None,
        duration_s: Annotated[float, typer.Option(min=30.0, help="Length of the run.")] = 1800.0,
        sample_s: Annotated[float, typer.Option(min=1.0, help="Sampling period.")] = 10.0,
        concurrency: Annotated[int, typer.Option(min=1, help="Client threads.")] = 6,
    ) -> None:
        """A long steady mixed load; RSS, descriptors and shared memory of every process of
        the stack sampled every 10 s: flat, and no error?"""
        exit_on_sigterm()
        console = Console()
        config = SoakConfig(
            duration_s=duration_s,
            sample_s=sample_s,
            concurrency=concurrency,
            warmup_s=min(60.0, duration_s / 5),
        )
        data = run_soak(config, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
        rows = [[label, v["rss_first_mb"], v["rss_last_mb"], v["rss_growth_mb"], v["fds_first"],
                 v["fds_last"], "yes" if v["flat"] else "NO"]
                for label, v in data["verdict"].items()]  # fmt: skip
        print_table(
            f"soak: {duration_s:.0f} s, {len(data['samples'])} samples",
            ("process", "RSS first MB", "RSS last MB", "growth MB", "fds first", "fds last",
             "flat"),
            rows,
            console=console,
        )  # fmt: skip
        console.print(f"requests: {data['requests']}; shared-memory segments left: "
                      f"{data['shm_left']}")  # fmt: skip
        if json_path is not None:
            write_json(json_path, data)
        r = data["requests"]
        if not data["flat"] or r["failed"] or r["lost"] or r["retryable"] or data["shm_left"]:
            raise typer.Exit(1)
