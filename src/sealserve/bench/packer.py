"""``sealserve bench packer``: FnPacker's routing policies on a trace, in the simulator.

Every policy runs the same trace on the same platform (keep-alive, instance memory and
concurrency, maximum instances) with the same cost model and seed; the table gives each one's
latency percentiles, cold starts, model loads and GB-seconds, with ratios to ``dedicated``
(one function per model on the packed group's instance configuration: the same measured
runtime) and to ``dedicated-fitted`` (one function per model, each sized for its model)
measured in the same run.  The packed
policies' instances have the platform's default memory (``platform.instance_memory_mb``), and
their runtime's model budget is what the runtime leaves of it.

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
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sealserve.bench._common import environment, interleaved, print_table, ratio, write_json
from sealserve.bench._packer_costs import measure_costs
from sealserve.config import PlatformSettings
from sealserve.errors import PackerError
from sealserve.packer import (
    POLICY_NAMES,
    CostModel,
    GroupConfig,
    SimResult,
    SyntheticConfig,
    Trace,
    make_policy,
    read_trace_csv,
    simulate,
    synthetic_trace,
    write_trace_csv,
)

__all__ = [
    "PolicyRuns",
    "evaluate_goals",
    "ideal_packing_gb_s",
    "measure_costs",
    "register",
    "run_policies",
]

_BASELINE = "dedicated"
_FITTED = "dedicated-fitted"
_PLATFORM = PlatformSettings()

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


def ideal_packing_gb_s(run: SimResult, costs: CostModel, config: GroupConfig) -> float:
    """GB-seconds of an ideal packer that keeps every model resident as long as ``dedicated``
    kept the model's function alive, billed only for the models' own memory plus one runtime.

    ``run`` is a ``dedicated`` run.  Packing with the same residency (so the same latency) can
    save the functions' runtimes, their rounding to memory steps and their empty space, never
    more: this is how low it can go without evicting models sooner than a keep-alive.
    """
    prefix = f"{config.name}/"
    mb_s = sum(costs.memory_mb(f.removeprefix(prefix)) * sec for f, sec in run.function_s.items())
    return (mb_s + costs.runtime_base_mb * run.end_s) / 1024.0


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
    policies: dict[str, Any] = {}
    for name, res in results.items():
        entry = res.summary()
        for key, baseline in (
            ("ratio_to_dedicated", results.get(_BASELINE)),
            ("ratio_to_dedicated_fitted", results.get(_FITTED)),
        ):
            if baseline is not None:
                entry[key] = {
                    "p50": ratio(res.median("p50_ms"), baseline.median("p50_ms")),
                    "p99": ratio(res.median("p99_ms"), baseline.median("p99_ms")),
                    "gb_s": ratio(res.median("gb_s"), baseline.median("gb_s")),
                    "switches": ratio(res.switches, baseline.switches),
                }
        policies[name] = entry
    reference: dict[str, Any] = {}
    base = results.get(_BASELINE)
    if base is not None:
        ideal = statistics.median(ideal_packing_gb_s(r, costs, config) for r in base.runs)
        reference["ideal_packing_gb_s"] = round(ideal, 3)
        reference["ideal_packing_ratio_to_dedicated"] = ratio(ideal, base.median("gb_s"))
        fitted = results.get(_FITTED)
        if fitted is not None:
            reference["ideal_packing_ratio_to_dedicated_fitted"] = ratio(
                ideal, fitted.median("gb_s")
            )
    summary = trace.summary()
    summary["zoo_model_of"] = {m: costs.zoo_model_for(m) for m in trace.models}
    platform = dataclasses.asdict(config)
    platform["instance_memory_mb"] = config.shape.memory_mb
    platform["shapes"] = [
        {"memory_mb": shape.memory_mb, "budget_mb": shape.budget_mb} for shape in config.shapes
    ]
    platform["lru_max_models"] = max_models
    platform["dedicated_memory_mb"] = config.shape.memory_mb
    platform["dedicated_fitted_memory_mb"] = {
        m: config.fitted_memory_mb(costs.memory_mb(m)) for m in trace.models
    }
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
        "reference": reference,
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
    ] = _PLATFORM.keep_alive_s,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Requests one instance serves at once.", min=1)
    ] = _PLATFORM.instance_concurrency,
    instance_memory_mb: Annotated[
        int,
        typer.Option(
            "--instance-memory-mb",
            help="Billed memory of a packed instance (default: the platform's).",
            min=1,
        ),
    ] = _PLATFORM.instance_memory_mb,
    budget_mb: Annotated[
        float | None,
        typer.Option(
            "--budget-mb",
            help="Model memory budget of a packed instance (default: its memory less the "
            "runtime's).",
            min=1.0,
        ),
    ] = None,
    sizes_mb: Annotated[
        str,
        typer.Option(
            "--sizes-mb",
            help="Other instance sizes (MB, comma-separated) sealserve may start besides "
            "--instance-memory-mb, each with the same runtime reserve; '' for none.",
        ),
    ] = "512,1024",
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
    console = Console(width=max(Console().width, 140))
    simulate_wanted = trace_path is not None or synthetic is not None
    if trace_path is not None and synthetic is not None:
        raise _fail("give --trace or --synthetic, not both")
    if budget_mb is not None and budget_mb >= instance_memory_mb:
        raise _fail(
            f"--budget-mb {budget_mb:g} leaves no room for the runtime in "
            f"--instance-memory-mb {instance_memory_mb}"
        )
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
        sizes = _sizes(sizes_mb)
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
    try:
        config = _platform(
            costs,
            instance_memory_mb=instance_memory_mb,
            sizes_mb=sizes,
            budget_mb=budget_mb,
            concurrency=concurrency,
            keep_alive_s=keep_alive_s,
            max_instances=max_instances,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
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


def _sizes(text: str) -> tuple[int, ...]:
    sizes = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            size = int(part)
        except ValueError:
            raise ValueError(f"--sizes-mb: {part.strip()!r} is not a whole number of MB") from None
        sizes.append(size)
    return tuple(sorted(set(sizes)))


def _platform(
    costs: CostModel,
    *,
    instance_memory_mb: int,
    sizes_mb: tuple[int, ...],
    budget_mb: float | None,
    concurrency: int,
    keep_alive_s: float,
    max_instances: int,
) -> GroupConfig:
    """The packed instances: the given memory, and by default a budget of what the runtime
    leaves of it."""
    options: dict[str, Any] = {
        "sizes_mb": sizes_mb,
        "concurrency": concurrency,
        "keep_alive_s": keep_alive_s,
        "max_instances": max_instances,
    }
    base = costs.runtime_base_mb
    if instance_memory_mb <= base:
        raise ValueError(
            f"--instance-memory-mb {instance_memory_mb} leaves no room for models beside "
            f"the runtime ({base:.0f} MB)"
        )
    if budget_mb is None:
        return GroupConfig.for_instance(
            memory_mb=instance_memory_mb, runtime_base_mb=base, **options
        )
    if budget_mb > instance_memory_mb - base:
        raise ValueError(
            f"--budget-mb {budget_mb:g} does not fit in --instance-memory-mb "
            f"{instance_memory_mb} beside the runtime ({base:.0f} MB)"
        )
    return GroupConfig(
        budget_mb=budget_mb, runtime_base_mb=base, memory_mb=instance_memory_mb, **options
    )


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
        f"{config.shape.memory_mb} MB instances ({config.budget_mb:.0f} MB for models; "
        f"sealserve's sizes: {', '.join(str(s.memory_mb) for s in config.shapes)} MB), "
        f"concurrency {config.concurrency}; dedicated functions on the same instances, "
        f"dedicated-fitted ones sized per model (runtime + model in {config.memory_step_mb} MB "
        "steps)"
    )
    rows = []
    for name, res in results.items():
        ratios = report["policies"][name].get("ratio_to_dedicated", {})
        fitted = report["policies"][name].get("ratio_to_dedicated_fitted", {})
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
                fitted.get("gb_s", math.nan),
                res.median("peak_instances"),
            )
        )
    repeats = len(next(iter(results.values())).runs)
    print_table(
        f"FnPacker policies: medians of {repeats} runs, ratios to dedicated (ded: one function "
        "per model on the group's instances; fit: sized per model) in the same run",
        (
            "policy",
            "p50 ms",
            "p99 ms",
            "p99 x ded",
            "cold starts",
            "model loads",
            "GB-s",
            "GB-s x ded",
            "GB-s x fit",
            "peak inst.",
        ),
        rows,
        console=console,
    )
    reference = report["reference"]
    ideal = reference.get("ideal_packing_ratio_to_dedicated")
    if ideal is not None:
        fitted = reference.get("ideal_packing_ratio_to_dedicated_fitted")
        also = f", {fitted:.2f} x dedicated-fitted" if fitted is not None else ""
        console.print(
            "  reference: an ideal packer with dedicated's residency (each model resident while "
            "its function was alive, billed for model memory plus one runtime): "
            f"{reference['ideal_packing_gb_s']:,.0f} GB-s, {ideal:.2f} x dedicated{also}"
        )
    for goal in report["goals"]:
        mark = "[green]met[/green]" if goal["met"] else "[red]not met[/red]"
        value = goal["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        console.print(f"  goal: {goal['goal']}: {shown} ({mark})")


def register(app: typer.Typer) -> None:
    """Add ``packer`` to the ``sealserve bench`` group."""
    app.command("packer")(_packer)
