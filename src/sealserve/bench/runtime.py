"""``sealserve bench runtime``: SeMIRT through a real instance vs plain onnxruntime and vs the
per-request baseline, with the cold-start breakdown; optionally the packer's cost model.

In one run, on one local stack (platform daemon, KeyService, owner and user, model store), for
MobileNetV2, ResNet-50 and MiniLM (int8):

* **warm**: a sealed request end to end as a user sees it (seal the input, ``POST /v1/infer``
  to the host, ipc to the runtime, unseal, infer, seal, back, unseal the output) against plain
  onnxruntime on the plaintext model in this process, both with the same intra-op threads
  (and the same session options); the two alternate request by request, the one that goes
  first alternating too, on several fresh instances and plain sessions (a process's place on
  a shared machine shifts its speed); each figure is a median.  The host's ``Server-Timing``
  splits a sealed request into the client and HTTP, the host, the runtime and inference;
* **baseline**: the same sealed request on an instance in the per-request baseline mode (a new
  key pair, KeyService attestation and key release, model fetch, unseal and session for every
  request: SeSeMI's comparison point), alternating with SeMIRT's warm request;
* **cold start**: a fresh instance (host process and runtime) per model and round, its first
  request's stages (``sandbox_start`` ... ``output_seal``), medians over the rounds.

Goals: sealed/plain p50 <= 1.05 for ResNet-50 and <= 1.15 for MobileNetV2; SeMIRT at least 5x
faster than the baseline mode for MobileNetV2.  The JSON has ``models``, keyed by model name,
each with ``sealed_p50_ms``, ``plain_p50_ms``, ``sealed_over_plain``, ``baseline_mode_p50_ms``
and ``cold_start_ms``.  ``--costs-out PATH`` also writes the FnPacker cost model
(``sealserve.packer.CostModel``) measured on the real runtime, for ``sealserve bench packer
--costs PATH``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sealserve.bench._common import (
    environment,
    percentile,
    print_table,
    ratio,
    write_json,
)

if TYPE_CHECKING:
    from sealserve.packer import CostModel

__all__ = ["RuntimeBenchConfig", "cost_model", "register", "run_runtime_bench"]

MODELS: Final = ("mobilenet-v2", "resnet-50", "minilm-int8")
#: sealed/plain p50 goals, by model.
OVERHEAD_GOALS: Final = {"resnet-50": 1.05, "mobilenet-v2": 1.15}
#: SeMIRT at least this many times faster than the baseline mode, by model.
SPEEDUP_GOALS: Final = {"mobilenet-v2": 5.0}
_THREADS: Final = 2
_R = TypeVar("_R")
_S = TypeVar("_S")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeBenchConfig:
    models: tuple[str, ...] = MODELS
    threads: int = _THREADS
    #: Fresh instances (and fresh plain sessions) the warm comparison is repeated on: where a
    #: process lands on a shared machine shifts its speed, so several are pooled.
    warm_instances: int = 3
    #: Alternating sealed/plain rounds per model and instance.
    warm_rounds: int = 20
    baseline_rounds: int = 7
    cold_rounds: int = 3
    warmup: int = 3
    model_dir: Path | None = None

    @classmethod
    def quick(cls, **changes: Any) -> RuntimeBenchConfig:
        quick = {"warm_instances": 1, "warm_rounds": 15, "baseline_rounds": 3, "cold_rounds": 1}
        return cls(**{**quick, **changes})

    def __post_init__(self) -> None:
        for name in ("threads", "warm_instances", "warm_rounds", "baseline_rounds", "cold_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")
        if not self.models:
            raise ValueError("models must name at least one model")


@dataclasses.dataclass
class _Model:
    name: str
    path: Path
    inputs: dict[str, Any]
    stack_model: Any = None
    plain: Any = None


def run_runtime_bench(
    config: RuntimeBenchConfig, *, console: Console | None = None
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); the JSON-ready results."""
    console = console or Console(stderr=True)
    with contextlib.ExitStack() as cleanup:
        root = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sealserve-bench-")))
        model_dir = config.model_dir or root / "zoo"
        models, skipped = _build(config.models, model_dir, console)
        from sealserve.bench._runtime_stack import LocalStack

        stack = cleanup.enter_context(LocalStack(root / "stack", log_level="WARNING"))
        for m in models:
            m.stack_model = stack.add_model(m.name, m.path)
        with _progress(console) as progress:
            cold, memory, base_mb = _cold_starts(stack, models, config, progress)
            warm = _warm(stack, models, config, progress)
            baseline = _baseline(stack, models, config, progress)
    results: dict[str, Any] = {}
    for m in models:
        w, b = warm[m.name], baseline[m.name]
        sealed_p50 = statistics.median(w["sealed"])
        plain_p50 = statistics.median(w["plain"])
        baseline_p50 = statistics.median(b["baseline"])
        results[m.name] = {
            "sealed_p50_ms": round(sealed_p50, 3),
            "plain_p50_ms": round(plain_p50, 3),
            "sealed_over_plain": round(ratio(sealed_p50, plain_p50), 4),
            "baseline_mode_p50_ms": round(baseline_p50, 3),
            "cold_start_ms": cold[m.name],
            "sealed_p99_ms": round(percentile(w["sealed"], 99), 3),
            "plain_p99_ms": round(percentile(w["plain"], 99), 3),
            "semirt_paired_p50_ms": round(statistics.median(b["semirt"]), 3),
            "baseline_over_semirt": round(ratio(baseline_p50, statistics.median(b["semirt"])), 3),
            "sealed_stages_p50_ms": w["stages"],
            # The same request seen from inside: the host (from headers received to response
            # ready) and the runtime (from the call received to the output sealed).
            "instance_over_plain": round(ratio(w["stages"]["total"], plain_p50), 4),
            "runtime_over_plain": round(ratio(w["stages"]["runtime"], plain_p50), 4),
            "model_memory_mb": round(memory[m.name], 3),
            "sealed_model_mb": round(m.stack_model.sealed_bytes / 2**20, 3),
            "samples": {"warm": len(w["sealed"]), "baseline": len(b["baseline"])},
        }
    goals = _goals(results)
    return {
        "benchmark": "runtime",
        "config": {
            "threads": config.threads,
            "warm_instances": config.warm_instances,
            "warm_rounds": config.warm_rounds,
            "baseline_rounds": config.baseline_rounds,
            "cold_rounds": config.cold_rounds,
        },
        "models": results,
        "runtime_base_mb": round(base_mb, 3),
        "goals": goals,
        "skipped": skipped,
        "environment": environment(),
    }


# -- phases ------------------------------------------------------------------------------------


def _build(
    names: Sequence[str], model_dir: Path, console: Console
) -> tuple[list[_Model], dict[str, str]]:
    from sealserve.errors import ModelError
    from sealserve.models import build, get_spec

    models: list[_Model] = []
    skipped: dict[str, str] = {}
    with console.status("building zoo models") as status:
        for name in names:
            status.update(f"building {name}")
            try:
                path = build(name, model_dir)
            except (ModelError, OSError) as exc:
                skipped[name] = str(exc)
                continue
            models.append(_Model(name=name, path=path, inputs=get_spec(name).example_inputs(0)))
    if not models:
        raise ValueError(f"no model could be built: {skipped}")
    return models, skipped


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield progress


def _user(stack: Any) -> str:
    assert stack.user is not None
    return str(stack.user.principal_id)


def _sealed_call(client: Any, m: _Model, user: str) -> Callable[[], tuple[float, dict[str, float]]]:
    from sealserve.bench._runtime_stack import infer_tensors

    def call() -> tuple[float, dict[str, float]]:
        started = time.perf_counter()
        _, stages = infer_tensors(
            client,
            m.stack_model.request_key,
            m.inputs,
            model_id=m.stack_model.model_id,
            user_id=user,
        )
        return (time.perf_counter() - started) * 1000, stages

    return call


def _cold_starts(
    stack: Any, models: list[_Model], config: RuntimeBenchConfig, progress: Progress
) -> tuple[dict[str, dict[str, float]], dict[str, float], float]:
    from sealserve.ecall import timings

    task = progress.add_task(
        "cold starts (a fresh instance each)", total=len(models) * config.cold_rounds
    )
    stages: dict[str, list[dict[str, float]]] = {m.name: [] for m in models}
    memory: dict[str, list[float]] = {m.name: [] for m in models}
    bases: list[float] = []
    user = _user(stack)
    for _ in range(config.cold_rounds):
        for m in models:
            with stack.start_instance(threads=config.threads, concurrency=1) as instance:
                before = instance.client.stats()["runtime"]["rss_bytes"] / 2**20
                _, got = _sealed_call(instance.client, m, user)()
                after = instance.client.stats()["runtime"]["rss_bytes"] / 2**20
            bases.append(before)
            memory[m.name].append(max(0.1, after - before))
            stages[m.name].append({k: v for k, v in got.items() if k in timings.COLD_START_STAGES})
            progress.advance(task)
    cold = {
        name: {
            stage: round(statistics.median(r[stage] for r in runs if stage in r), 3)
            for stage in timings.COLD_START_STAGES
            if any(stage in r for r in runs)
        }
        for name, runs in stages.items()
    }
    for c in cold.values():
        c["total"] = round(sum(c.values()), 3)
    return cold, {n: statistics.median(v) for n, v in memory.items()}, statistics.median(bases)


def _plain(m: _Model, threads: int) -> Callable[[], float]:
    import onnxruntime as ort

    from sealserve.runtime import session_options

    session = ort.InferenceSession(
        str(m.path), session_options(threads), providers=["CPUExecutionProvider"]
    )
    m.plain = session

    def run() -> float:
        started = time.perf_counter()
        session.run(None, m.inputs)
        return (time.perf_counter() - started) * 1000

    return run


def _alternating(
    first: Callable[[], _R], second: Callable[[], _S], *, rounds: int, tick: Callable[[], None]
) -> tuple[list[_R], list[_S]]:
    """Run both ``rounds`` times, alternating which goes first (ABBA...): the after-effects
    of one (a process finishing its work, caches) land on both alike; take medians."""
    a: list[_R] = []
    b: list[_S] = []
    for i in range(rounds):
        if i % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
        tick()
    return a, b


def _warm(
    stack: Any, models: list[_Model], config: RuntimeBenchConfig, progress: Progress
) -> dict[str, dict[str, Any]]:
    from sealserve.ecall import timings

    user = _user(stack)
    total = len(models) * config.warm_rounds * config.warm_instances
    task = progress.add_task("warm: sealed vs plain", total=total)
    stage_names = (
        timings.REQUEST_BODY,
        timings.INPUT_UNSEAL,
        timings.INFERENCE,
        timings.OUTPUT_SEAL,
        timings.RUNTIME,
        timings.TOTAL,
    )
    sealed_runs: dict[str, list[tuple[float, dict[str, float]]]] = {m.name: [] for m in models}
    plain_runs: dict[str, list[float]] = {m.name: [] for m in models}
    for _ in range(config.warm_instances):
        with stack.start_instance(threads=config.threads, concurrency=1) as instance:
            for m in models:
                sealed = _sealed_call(instance.client, m, user)
                plain = _plain(m, config.threads)
                for _ in range(config.warmup):
                    sealed()
                    plain()
                got_sealed, got_plain = _alternating(
                    sealed, plain, rounds=config.warm_rounds, tick=lambda: progress.advance(task)
                )
                m.plain = None  # one plain session alive at a time
                sealed_runs[m.name] += got_sealed
                plain_runs[m.name] += got_plain
    return {
        m.name: {
            "sealed": [r[0] for r in sealed_runs[m.name]],
            "plain": plain_runs[m.name],
            "stages": {
                s: round(statistics.median(r[1].get(s, math.nan) for r in sealed_runs[m.name]), 3)
                for s in stage_names
            },
        }
        for m in models
    }


def _baseline(
    stack: Any, models: list[_Model], config: RuntimeBenchConfig, progress: Progress
) -> dict[str, dict[str, list[float]]]:
    user = _user(stack)
    out: dict[str, dict[str, list[float]]] = {}
    task = progress.add_task(
        "SeMIRT vs per-request baseline", total=len(models) * config.baseline_rounds
    )
    with (
        stack.start_instance(threads=config.threads, concurrency=1, name="semirt") as semirt,
        stack.start_instance(
            threads=config.threads, concurrency=1, baseline=True, name="baseline"
        ) as baseline,
    ):
        for m in models:
            fast = _sealed_call(semirt.client, m, user)
            slow = _sealed_call(baseline.client, m, user)
            fast()
            slow()
            semirt_runs, baseline_runs = _alternating(
                fast, slow, rounds=config.baseline_rounds, tick=lambda: progress.advance(task)
            )
            out[m.name] = {
                "semirt": [r[0] for r in semirt_runs],
                "baseline": [r[0] for r in baseline_runs],
            }
    return out


def _goals(results: dict[str, Any]) -> dict[str, Any]:
    goals: dict[str, Any] = {}
    for name, limit in OVERHEAD_GOALS.items():
        if name in results:
            value = results[name]["sealed_over_plain"]
            goals[f"{name} sealed/plain <= {limit}"] = {
                "value": value,
                "goal": limit,
                "met": bool(value <= limit),
            }
    for name, factor in SPEEDUP_GOALS.items():
        if name in results:
            value = results[name]["baseline_over_semirt"]
            goals[f"{name} SeMIRT >= {factor}x faster than the baseline mode"] = {
                "value": value,
                "goal": factor,
                "met": bool(value >= factor),
            }
    return goals


# -- the packer's cost model -------------------------------------------------------------------


def cost_model(results: dict[str, Any]) -> CostModel:
    """The FnPacker cost model these measurements of the real runtime give."""
    from sealserve.ecall import timings
    from sealserve.packer import CostModel, ModelCosts

    models = {}
    colds = []
    for name, r in results["models"].items():
        c = r["cold_start_ms"]
        load_ms = sum(
            c.get(s, 0.0)
            for s in (
                timings.ATTESTATION_KEY_RELEASE,
                timings.MODEL_FETCH,
                timings.MODEL_UNSEAL_SESSION,
            )
        )
        colds.append(c.get(timings.SANDBOX_START, 0.0) + c.get(timings.RUNTIME_START, 0.0))
        models[name] = ModelCosts(
            load_s=max(load_ms, 0.001) / 1000,
            infer_s=max(r["sealed_p50_ms"], 0.001) / 1000,
            memory_mb=max(r["model_memory_mb"], 0.1),
            file_mb=max(r["sealed_model_mb"], 0.001),
        )
    return CostModel(
        cold_start_s=max(statistics.median(colds), 1.0) / 1000,
        runtime_base_mb=max(results["runtime_base_mb"], 1.0),
        models=models,
        source="sealserve-runtime",
        methods={
            "cold_start_ms": "median over fresh instances of sandbox_start (host process spawn "
            "to ready to launch) + runtime_start (launch through the simulated TEE platform "
            "until the runtime answers over ipc)",
            "load_ms": "first request of the model in a fresh runtime: attestation_key_release "
            "+ model_fetch (store to shared memory, digest checked) + model_unseal_session",
            "infer_ms": "median warm sealed request end to end (client seal, HTTP, ipc, "
            "runtime, back, unseal), batch 1, same threads as plain onnxruntime",
            "memory_mb": "growth of the runtime's resident set from a fresh start to after "
            "its first request of the model",
            "runtime_base_mb": "resident set of a fresh runtime before any model",
            "file_mb": "size of the sealed model",
        },
        environment=results["environment"],
    )


# -- the command -------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    @app.command("runtime")
    def runtime_command(
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write the results here as JSON.")
        ] = None,
        quick: Annotated[
            bool, typer.Option("--quick", help="Fewer rounds (a few minutes).")
        ] = False,
        costs_out: Annotated[
            Path | None,
            typer.Option(
                "--costs-out",
                help="Also write the FnPacker cost model measured here (for bench packer --costs).",
            ),
        ] = None,
        model_dir: Annotated[
            Path | None,
            typer.Option("--model-dir", help="Build (or reuse) the zoo models here."),
        ] = None,
        models: Annotated[
            list[str] | None,
            typer.Option("--model", help=f"Only these models (repeatable): {', '.join(MODELS)}."),
        ] = None,
        threads: Annotated[
            int, typer.Option(min=1, help="onnxruntime intra-op threads, on both sides.")
        ] = _THREADS,
    ) -> None:
        """SeMIRT through a real instance vs plain onnxruntime and vs the per-request baseline,
        with the cold-start breakdown (MobileNetV2, ResNet-50, MiniLM)."""
        console = Console()
        changes: dict[str, Any] = {"threads": threads, "model_dir": model_dir}
        if models:
            changes["models"] = tuple(models)
        try:
            config = RuntimeBenchConfig.quick(**changes) if quick else RuntimeBenchConfig(**changes)
            results = run_runtime_bench(config, console=Console(stderr=True))
        except (ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        _report(results, console)
        if json_path is not None:
            write_json(json_path, results)
            console.print(f"wrote {json_path}")
        if costs_out is not None:
            cost_model(results).save(costs_out)
            console.print(f"wrote the packer cost model to {costs_out}")


def _report(results: dict[str, Any], console: Console) -> None:
    models = results["models"]
    print_table(
        "warm sealed inference (client -> host -> runtime -> client) vs plain onnxruntime",
        [
            "model",
            "plain p50 ms",
            "sealed p50 ms",
            "sealed/plain",
            "goal",
            "baseline p50 ms",
            "baseline/SeMIRT",
        ],
        [
            [
                name,
                r["plain_p50_ms"],
                r["sealed_p50_ms"],
                r["sealed_over_plain"],
                f"<= {OVERHEAD_GOALS[name]}" if name in OVERHEAD_GOALS else "-",
                r["baseline_mode_p50_ms"],
                r["baseline_over_semirt"],
            ]
            for name, r in models.items()
        ],
        console=console,
    )
    print_table(
        "where a warm sealed request's time goes (p50 ms; the rest is the client and HTTP)",
        [
            "model",
            "end to end",
            "host total",
            "request body",
            "runtime",
            "inference",
            "plain",
            "host/plain",
            "runtime/plain",
        ],
        [
            [
                name,
                r["sealed_p50_ms"],
                r["sealed_stages_p50_ms"].get("total", math.nan),
                r["sealed_stages_p50_ms"].get("request_body", math.nan),
                r["sealed_stages_p50_ms"].get("runtime", math.nan),
                r["sealed_stages_p50_ms"].get("inference", math.nan),
                r["plain_p50_ms"],
                r["instance_over_plain"],
                r["runtime_over_plain"],
            ]
            for name, r in models.items()
        ],
        console=console,
    )
    stages = sorted({s for r in models.values() for s in r["cold_start_ms"]}, key=_stage_order)
    print_table(
        "cold start: a fresh instance's first request (median ms)",
        ["stage", *models],
        [[s, *(models[n]["cold_start_ms"].get(s, math.nan) for n in models)] for s in stages],
        console=console,
    )
    for goal, g in results["goals"].items():
        mark = "met" if g["met"] else "MISSED"
        console.print(f"goal {goal}: {g['value']} ({mark})")
    for name, why in results["skipped"].items():
        console.print(f"skipped {name}: {why}")


def _stage_order(stage: str) -> int:
    from sealserve.ecall import timings

    order = [*timings.COLD_START_STAGES, "total"]
    return order.index(stage) if stage in order else len(order)
