"""``sealserve bench packer``: FnPacker's routing policies on a trace, in the simulator.

Every policy runs the same trace on the same platform (keep-alive, instance memory and
concurrency, maximum instances) with the same cost model and seed; the table gives each one's
latency percentiles, cold starts, model loads and GB-seconds, with ratios to ``dedicated``
(one function per model) measured in the same run.

The cost model is measured on this machine (``--measure-costs PATH``, or automatically when
``--costs`` is not given, cached beside the JSON output): for each model of the zoo, a load is
reading the file and creating an onnxruntime session, an inference is the median batch-1 run
with 2 threads, the memory is the resident-set growth of a fresh process that loads the model
and runs it once; a cold start is a fresh Python process that imports onnxruntime and creates
a session for the smallest model.  The sealed runtime will write the same JSON with its own
figures (fetch, unseal and attestation included).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sealserve.bench._common import environment, interleaved, print_table, ratio, write_json
from sealserve.errors import ModelError, PackerError
from sealserve.packer import (
    POLICY_NAMES,
    CostModel,
    GroupConfig,
    ModelCosts,
    SimResult,
    SyntheticConfig,
    Trace,
    make_policy,
    read_trace_csv,
    simulate,
    synthetic_trace,
    write_trace_csv,
)

__all__ = ["PolicyRuns", "evaluate_goals", "measure_costs", "register", "run_policies"]

_BASELINE = "dedicated"
_THREADS = 2

# A fresh process: resident memory after importing onnxruntime, then after loading the model
# and running it once.  /proc/self/statm is Linux's; elsewhere the peak (ru_maxrss) stands in.
_MEMORY_CHILD = r"""
import json, os, sys
import numpy as np
import onnxruntime as ort

def rss_mb():
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

base = rss_mb()
so = ort.SessionOptions()
so.intra_op_num_threads = 2
so.inter_op_num_threads = 1
with open(sys.argv[1], "rb") as fh:
    data = fh.read()
sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
del data
inputs = dict(np.load(sys.argv[2]))
sess.run(None, inputs)
print(json.dumps({"base_mb": base, "after_mb": rss_mb()}))
"""

_COLD_CHILD = r"""
import sys
import onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 2
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
"""

_METHODS = {
    "load_ms": "median of 3 interleaved rounds: read the .onnx file and create an onnxruntime "
    "session from its bytes (CPU, 2 intra-op threads) in the measuring process; no fetch, "
    "unseal or key release (the sealed runtime adds them)",
    "infer_ms": "median of interleaved batch-1 runs on the zoo's example inputs, 2 intra-op "
    "threads, after 2 warm-up runs",
    "memory_mb": "resident-set growth of a fresh Python process that imported onnxruntime, "
    "loaded the model from its bytes and ran it once (/proc/self/statm)",
    "runtime_base_mb": "median resident set of those fresh processes after importing numpy "
    "and onnxruntime, before any model",
    "cold_start_ms": "median of 3 runs, wall time from spawning a fresh Python process to its "
    "exit after importing onnxruntime and creating a session for the smallest model; no "
    "sandbox, enclave or attestation (the sealed runtime adds them)",
}


# -- measuring the cost model -------------------------------------------------------------------


def measure_costs(
    *,
    model_dir: Path,
    models: Sequence[str] | None = None,
    console: Console | None = None,
    load_rounds: int = 3,
    infer_rounds: int = 15,
) -> CostModel:
    """Measure the cost model of the zoo's models on this machine (see the module docs)."""
    import onnxruntime as ort

    from sealserve.models import build, list_specs

    console = console or Console(stderr=True)
    specs = [s for s in list_specs() if models is None or s.name in models]
    if not specs:
        raise ValueError(f"no zoo model matches {list(models or [])!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _THREADS
    options.inter_op_num_threads = 1
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("building zoo models", total=len(specs))
        for spec in specs:
            progress.update(task, description=f"building {spec.name}")
            try:
                paths[spec.name] = build(spec.name, model_dir)
            except (ModelError, OSError) as exc:
                skipped[spec.name] = str(exc)
            progress.advance(task)
        if not paths:
            raise ValueError(f"no zoo model could be built: {skipped}")
        examples = {s.name: s.example_inputs(0) for s in specs if s.name in paths}
        inputs_dir = Path(tempfile.mkdtemp(prefix="sealserve-costs-"))
        try:
            task = progress.add_task("measuring loads", total=load_rounds * len(paths))

            def loader(path: Path) -> Callable[[], float]:
                def load() -> float:
                    started = time.perf_counter()
                    ort.InferenceSession(
                        path.read_bytes(), options, providers=["CPUExecutionProvider"]
                    )
                    progress.advance(task)
                    return time.perf_counter() - started

                return load

            loads = interleaved({n: loader(p) for n, p in paths.items()}, repeats=load_rounds)
            sessions = {
                n: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for n, p in paths.items()
            }
            for name, sess in sessions.items():
                for _ in range(2):
                    sess.run(None, examples[name])
            task = progress.add_task("measuring inference", total=infer_rounds * len(paths))

            def runner(name: str) -> Callable[[], float]:
                def run() -> float:
                    started = time.perf_counter()
                    sessions[name].run(None, examples[name])
                    progress.advance(task)
                    return time.perf_counter() - started

                return run

            infers = interleaved({n: runner(n) for n in paths}, repeats=infer_rounds)
            sessions.clear()
            task = progress.add_task("measuring memory (fresh processes)", total=len(paths))
            memory: dict[str, float] = {}
            bases: list[float] = []
            for name, path in paths.items():
                npz = inputs_dir / f"{name}.npz"
                np.savez(npz, **examples[name])  # type: ignore[arg-type]
                out = _child(_MEMORY_CHILD, str(path), str(npz))
                figures = json.loads(out)
                bases.append(float(figures["base_mb"]))
                memory[name] = max(1.0, float(figures["after_mb"]) - float(figures["base_mb"]))
                progress.advance(task)
            smallest = min(paths, key=lambda n: paths[n].stat().st_size)
            task = progress.add_task(f"measuring cold starts ({smallest})", total=3)
            colds = []
            for _ in range(3):
                started = time.perf_counter()
                _child(_COLD_CHILD, str(paths[smallest]))
                colds.append(time.perf_counter() - started)
                progress.advance(task)
        finally:
            for leftover in inputs_dir.iterdir():
                leftover.unlink()
            inputs_dir.rmdir()
    methods = dict(_METHODS)
    methods["cold_start_model"] = smallest
    if skipped:
        methods["skipped"] = "; ".join(f"{n}: {why}" for n, why in skipped.items())
    return CostModel(
        cold_start_s=statistics.median(colds),
        runtime_base_mb=statistics.median(bases),
        models={
            name: ModelCosts(
                load_s=statistics.median(loads[name]),
                infer_s=statistics.median(infers[name]),
                memory_mb=memory[name],
                file_mb=paths[name].stat().st_size / 2**20,
            )
            for name in paths
        },
        source="onnxruntime",
        methods=methods,
        environment=environment(),
    )


def _child(script: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(_THREADS))
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"measurement process failed: {exc.stderr.strip()[-500:]}") from exc
    return done.stdout


# -- running the policies -----------------------------------------------------------------------

#: The figures reported per policy: the median over the repeats of each.
_FIGURES = ("p50_ms", "p99_ms", "cold_starts", "model_loads", "gb_s")


@dataclasses.dataclass(frozen=True)
class PolicyRuns:
    """One policy's simulations of a trace, one per seed, and their medians."""

    name: str
    runs: tuple[SimResult, ...]

    def median(self, figure: str) -> float:
        values = [float(r.summary()[figure]) for r in self.runs]
        return float(statistics.median(values))

    @property
    def switches(self) -> float:
        return float(statistics.median(r.cold_starts + r.model_loads for r in self.runs))

    def summary(self) -> dict[str, Any]:
        first = self.runs[0].summary()
        out: dict[str, Any] = {key: self.median(key) for key in first if key not in _SKIP}
        out["switches"] = self.switches
        out["repeats"] = [{k: r.summary()[k] for k in (*_FIGURES, "seed")} for r in self.runs]
        out["options"] = first["options"]
        return out


_SKIP = ("decisions", "options", "seed")


def run_policies(
    trace: Trace,
    costs: CostModel,
    *,
    policies: Sequence[str],
    config: GroupConfig,
    jitter: float,
    seed: int,
    repeats: int = 3,
    max_models: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, PolicyRuns]:
    """Simulate ``trace`` under each policy, ``repeats`` times with seeds ``seed``, ``seed+1``...

    The repeats differ only in the sampled costs (``jitter``); each uses fresh policy objects.
    They run interleaved, every policy once per round.
    """
    seeds: dict[str, int] = {}

    def case(name: str) -> Callable[[], SimResult]:
        def run() -> SimResult:
            count = seeds.get(name, 0)
            seeds[name] = count + 1
            policy = make_policy(name, priors=costs, max_models=max_models)
            return simulate(trace, policy, costs, config=config, jitter=jitter, seed=seed + count)

        return run

    results = interleaved({n: case(n) for n in policies}, repeats=repeats, progress=progress)
    return {name: PolicyRuns(name, tuple(runs)) for name, runs in results.items()}


def evaluate_goals(results: dict[str, PolicyRuns]) -> list[dict[str, Any]]:
    """Issue 6's simulator goals (on the medians), each with its value and whether it is met."""
    goals: list[dict[str, Any]] = []
    base = results.get(_BASELINE)
    if base is None:
        return goals
    for name in ("sesemi", "sealserve"):
        res = results.get(name)
        if res is None:
            continue
        gb = ratio(res.median("gb_s"), base.median("gb_s"))
        p99 = ratio(res.median("p99_ms"), base.median("p99_ms"))
        goals.append(
            {"goal": f"{name} GB-s <= 0.5 x dedicated", "value": gb, "met": bool(gb <= 0.5)}
        )
        goals.append(
            {"goal": f"{name} p99 <= 1.2 x dedicated", "value": p99, "met": bool(p99 <= 1.2)}
        )
    ours = results.get("sealserve")
    if ours is not None:
        for other in ("lru-multiplex", "sesemi"):
            res = results.get(other)
            if res is None:
                continue
            goals.append(
                {
                    "goal": f"sealserve cold starts + loads < {other}'s",
                    "value": f"{ours.switches:g} vs {res.switches:g}",
                    "met": ours.switches < res.switches,
                }
            )
    return goals


def _report(
    trace: Trace,
    costs: CostModel,
    config: GroupConfig,
    results: dict[str, PolicyRuns],
    *,
    jitter: float,
    seed: int,
    repeats: int,
    max_models: int,
    synthetic: SyntheticConfig | None,
) -> dict[str, Any]:
    base = results.get(_BASELINE)
    policies: dict[str, Any] = {}
    for name, res in results.items():
        entry = res.summary()
        if base is not None:
            entry["ratio_to_dedicated"] = {
                "p50": ratio(res.median("p50_ms"), base.median("p50_ms")),
                "p99": ratio(res.median("p99_ms"), base.median("p99_ms")),
                "gb_s": ratio(res.median("gb_s"), base.median("gb_s")),
                "switches": ratio(res.switches, base.switches),
            }
        policies[name] = entry
    summary = trace.summary()
    summary["zoo_model_of"] = {m: costs.zoo_model_for(m) for m in trace.models}
    platform = dataclasses.asdict(config)
    platform["instance_memory_mb"] = config.shape.memory_mb
    platform["lru_max_models"] = max_models
    return {
        "benchmark": "packer",
        "environment": environment(),
        "trace": summary,
        "synthetic": dataclasses.asdict(synthetic) if synthetic is not None else None,
        "platform": platform,
        "simulation": {"jitter": jitter, "seeds": list(range(seed, seed + repeats))},
        "costs": costs.to_json(),
        "policies": policies,
        "goals": evaluate_goals(results),
    }


# -- the command --------------------------------------------------------------------------------


def _fail(message: str, *, code: int = 2) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _packer(
    trace_path: Annotated[
        Path | None,
        typer.Option("--trace", help="A CSV trace: timestamp_s,model[,duration_ms]."),
    ] = None,
    synthetic: Annotated[
        int | None,
        typer.Option("--synthetic", help="Generate a trace with this seed instead.", min=0),
    ] = None,
    models: Annotated[
        int, typer.Option("--models", help="Models in a synthetic trace.", min=1)
    ] = 20,
    duration_s: Annotated[
        float, typer.Option("--duration-s", help="Length of a synthetic trace (s).", min=1.0)
    ] = 3600.0,
    policies: Annotated[
        str,
        typer.Option("--policies", help=f"Comma-separated, from: {', '.join(POLICY_NAMES)}."),
    ] = ",".join(POLICY_NAMES),
    costs_path: Annotated[
        Path | None, typer.Option("--costs", help="Use this saved cost model (JSON).")
    ] = None,
    measure_path: Annotated[
        Path | None,
        typer.Option("--measure-costs", help="Measure the cost model and save it here."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results here (JSON).")
    ] = None,
    keep_alive_s: Annotated[
        float, typer.Option("--keep-alive-s", help="Idle time before scale to zero.", min=0.001)
    ] = 180.0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Requests one instance serves at once.", min=1)
    ] = 4,
    budget_mb: Annotated[
        float,
        typer.Option("--budget-mb", help="Model memory budget of one instance.", min=1.0),
    ] = 1024.0,
    max_instances: Annotated[
        int, typer.Option("--max-instances", help="Instances per function, at most.", min=1)
    ] = 32,
    max_models: Annotated[
        int, typer.Option("--max-models", help="lru-multiplex: models per instance.", min=1)
    ] = 3,
    jitter: Annotated[
        float,
        typer.Option("--jitter", help="Variation of sampled costs (CV).", min=0.0, max=1.0),
    ] = 0.1,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the first simulation run.", min=0)
    ] = 0,
    repeats: Annotated[
        int, typer.Option("--repeats", help="Runs per policy (seeds differ); medians.", min=1)
    ] = 3,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model-dir", help="Where to build zoo models (default: a temp dir)."),
    ] = None,
    save_trace: Annotated[
        Path | None, typer.Option("--save-trace", help="Also write the trace as CSV here.")
    ] = None,
) -> None:
    """Simulate FnPacker's routing policies on a trace and compare them to dedicated.

    Per policy: p50 and p99 latency, cold starts, model loads and GB-seconds.

    Ratios are to dedicated (one function per model), measured in the same run.

    Give --trace FILE.csv or --synthetic SEED, and --json PATH.

    Without --costs the cost model is measured here (a minute or two) and cached beside --json.
    """
    console = Console(width=max(Console().width, 120))
    simulate_wanted = trace_path is not None or synthetic is not None
    if trace_path is not None and synthetic is not None:
        raise _fail("give --trace or --synthetic, not both")
    if not simulate_wanted and measure_path is None:
        raise _fail("give --trace FILE.csv or --synthetic SEED (or --measure-costs PATH)")
    if simulate_wanted and json_path is None:
        raise _fail("give --json PATH for the results")
    if costs_path is not None and measure_path is not None:
        raise _fail("give --costs or --measure-costs, not both")
    chosen = [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in POLICY_NAMES]
    if unknown or not chosen:
        raise _fail(f"unknown policy {unknown or policies!r}; known: {', '.join(POLICY_NAMES)}")
    try:
        config = GroupConfig(
            budget_mb=budget_mb,
            concurrency=concurrency,
            keep_alive_s=keep_alive_s,
            max_instances=max_instances,
        )
        synthetic_cfg = (
            SyntheticConfig(models=models, duration_s=duration_s) if synthetic is not None else None
        )
        trace: Trace | None = None
        if trace_path is not None:
            trace = read_trace_csv(trace_path)
        elif synthetic is not None:
            trace = synthetic_trace(synthetic, synthetic_cfg)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    costs = _costs(costs_path, measure_path, json_path, model_dir, console)
    if trace is None:
        return
    config = dataclasses.replace(config, runtime_base_mb=costs.runtime_base_mb)
    if save_trace is not None:
        write_trace_csv(trace, save_trace)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("simulating", total=repeats * len(chosen))

            def advance(what: str) -> None:
                bar.update(task, description=f"simulating {what}")
                bar.advance(task)

            results = run_policies(
                trace,
                costs,
                policies=chosen,
                config=config,
                jitter=jitter,
                seed=seed,
                repeats=repeats,
                max_models=max_models,
                progress=advance,
            )
    except PackerError as exc:
        raise _fail(f"simulation failed: {exc}", code=1) from None
    report = _report(
        trace,
        costs,
        config,
        results,
        jitter=jitter,
        seed=seed,
        repeats=repeats,
        max_models=max_models,
        synthetic=synthetic_cfg,
    )
    assert json_path is not None
    write_json(json_path, report)
    _print(trace, config, results, report, console)
    console.print(f"results: {json_path}")


def _costs(
    costs_path: Path | None,
    measure_path: Path | None,
    json_path: Path | None,
    model_dir: Path | None,
    console: Console,
) -> CostModel:
    try:
        if costs_path is not None:
            return CostModel.load(costs_path)
        target = measure_path
        if target is None:
            assert json_path is not None
            target = json_path.with_name(json_path.stem + ".costs.json")
            if target.is_file():
                console.print(f"cost model: {target} (cached; delete it to measure again)")
                return CostModel.load(target)
        console.print("measuring the cost model on this machine ...")
        with tempfile.TemporaryDirectory(prefix="sealserve-zoo-") as tmp:
            costs = measure_costs(model_dir=model_dir or Path(tmp), console=console)
        costs.save(target)
        console.print(f"cost model: {target}")
        _print_costs(costs, console)
        return costs
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(str(exc), code=1) from None


def _print_costs(costs: CostModel, console: Console) -> None:
    rows = [
        (name, c.load_s * 1000, c.infer_s * 1000, c.memory_mb, c.file_mb or math.nan)
        for name, c in costs.models.items()
    ]
    print_table(
        f"cost model ({costs.source}): cold start {costs.cold_start_s * 1000:.0f} ms, "
        f"runtime {costs.runtime_base_mb:.0f} MB",
        ("model", "load ms", "infer ms", "memory MB", "file MB"),
        rows,
        console=console,
    )


def _print(
    trace: Trace,
    config: GroupConfig,
    results: dict[str, PolicyRuns],
    report: dict[str, Any],
    console: Console,
) -> None:
    summary = report["trace"]
    console.print(
        f"trace {summary['name']}: {summary['requests']} requests, {summary['models']} models, "
        f"{summary['duration_s']:.0f} s; platform: keep-alive {config.keep_alive_s:.0f} s, "
        f"{config.shape.memory_mb} MB instances ({config.budget_mb:.0f} MB for models), "
        f"concurrency {config.concurrency}"
    )
    rows = []
    for name, res in results.items():
        ratios = report["policies"][name].get("ratio_to_dedicated", {})
        rows.append(
            (
                name,
                res.median("p50_ms"),
                res.median("p99_ms"),
                ratios.get("p99", math.nan),
                res.median("cold_starts"),
                res.median("model_loads"),
                res.median("gb_s"),
                ratios.get("gb_s", math.nan),
                res.median("peak_instances"),
            )
        )
    repeats = len(next(iter(results.values())).runs)
    print_table(
        f"FnPacker policies: medians of {repeats} runs, ratios to dedicated in the same run",
        (
            "policy",
            "p50 ms",
            "p99 ms",
            "p99 x ded",
            "cold starts",
            "model loads",
            "GB-s",
            "GB-s x ded",
            "peak inst.",
        ),
        rows,
        console=console,
    )
    for goal in report["goals"]:
        mark = "[green]met[/green]" if goal["met"] else "[red]not met[/red]"
        value = goal["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        console.print(f"  goal: {goal['goal']}: {shown} ({mark})")


def register(app: typer.Typer) -> None:
    """Add ``packer`` to the ``sealserve bench`` group."""
    app.command("packer")(_packer)
