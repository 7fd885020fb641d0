"""``sealserve bench packer``: FnPacker's routing policies on a trace, in the simulator.

Every policy runs the same trace on the same platform (keep-alive, instance memory and
concurrency, maximum instances) with the same cost model and seed; the table gives each one's
latency percentiles, cold starts, model loads and GB-seconds, with ratios to ``dedicated``
(one function per model on the packed group's instance configuration: the same measured
runtime) and to ``dedicated-fitted`` (one function per model, each sized for its model)
measured in the same run.  The simulated platform is the live one's defaults: the packed
policies' instances have ``platform.instance_memory_mb``, ``sealserve`` may also start
``platform.sizes_mb``, and every instance keeps the live platform's reserve for the instance
host and the runtime (:data:`~sealserve.config.RUNTIME_RESERVE_MB`); the rest of its memory is
the runtime's model budget.

The cost model is measured on this machine (``--measure-costs PATH``, or automatically when
``--costs`` is not given, cached beside the JSON output): for each model of the zoo, a load is
reading the file and creating an onnxruntime session, an inference is the median batch-1 run
with 2 threads, the memory is the resident-set growth of a fresh process that loads the model
and runs it once; a cold start is a fresh Python process that imports onnxruntime and creates
a session for the smallest model.  The sealed runtime writes the same JSON with its own
figures, fetch, unseal and attestation included (``sealserve bench runtime --costs-out``;
``sealserve bench all`` feeds them to this benchmark).
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sealserve.bench._common import environment, print_table, ratio, write_json
from sealserve.bench._packer_costs import measure_costs
from sealserve.bench._packer_runs import PolicyRuns, evaluate_goals, run_policies
from sealserve.config import RUNTIME_RESERVE_MB, PlatformSettings
from sealserve.errors import PackerError
from sealserve.packer import (
    POLICY_NAMES,
    CostModel,
    GroupConfig,
    SpareConfig,
    SyntheticConfig,
    Trace,
    ideal_packing_gb_s,
    ideal_shaped_gb_s,
    read_trace_csv,
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
#: ``--sizes-mb`` by default: the live platform's (``platform.sizes_mb``).
_DEFAULT_SIZES = ",".join(map(str, _PLATFORM.sizes_mb))


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
        shaped = [ideal_shaped_gb_s(r, costs, config) for r in base.runs]
        reference["ideal_shaped_gb_s"] = round(statistics.median(gb for gb, _ in shaped), 3)
        reference["ideal_shaped_exact"] = all(exact for _, exact in shaped)
        reference["ideal_shaped_ratio_to_dedicated"] = ratio(
            reference["ideal_shaped_gb_s"], base.median("gb_s")
        )
        fitted = results.get(_FITTED)
        if fitted is not None:
            for name in ("ideal_packing", "ideal_shaped"):
                reference[f"{name}_ratio_to_dedicated_fitted"] = ratio(
                    reference[f"{name}_gb_s"], fitted.median("gb_s")
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
            help="Model memory budget of a packed instance (default: its memory less "
            "--reserve-mb).",
            min=1.0,
        ),
    ] = None,
    reserve_mb: Annotated[
        float,
        typer.Option(
            "--reserve-mb",
            help="What every instance keeps for the instance host and the runtime beside its "
            "models (default: the live platform's reserve).",
            min=0.0,
        ),
    ] = RUNTIME_RESERVE_MB,
    sizes_mb: Annotated[
        str,
        typer.Option(
            "--sizes-mb",
            help="Other instance sizes (MB, comma-separated) sealserve may start besides "
            "--instance-memory-mb, each with the same runtime reserve; '' for none "
            "(default: the platform's).",
        ),
    ] = _DEFAULT_SIZES,
    max_instances: Annotated[
        int, typer.Option("--max-instances", help="Instances per function, at most.", min=1)
    ] = 32,
    spares: Annotated[
        int,
        typer.Option(
            "--spares",
            help="Spare instances started ahead of demand while instances are being started "
            "(billed; the live platform keeps 1 by default). 0, the default here, compares the "
            "policies as issue 6 did.",
            min=0,
        ),
    ] = 0,
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
    # Before a minute of measuring or simulating: every output path can be written.
    for option, target in (
        ("--json", json_path),
        ("--save-trace", save_trace),
        ("--measure-costs", measure_path),
    ):
        if target is not None:
            try:
                _check_writable(target)
            except OSError as exc:
                raise _cannot_write(option, target, exc) from None
    costs = _costs(costs_path, measure_path, json_path, model_dir, console)
    if trace is None:
        return
    try:
        config = _platform(
            instance_memory_mb=instance_memory_mb,
            sizes_mb=sizes,
            budget_mb=budget_mb,
            reserve_mb=reserve_mb,
            concurrency=concurrency,
            keep_alive_s=keep_alive_s,
            max_instances=max_instances,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if save_trace is not None:
        try:
            write_trace_csv(trace, save_trace)
        except OSError as exc:
            raise _cannot_write("--save-trace", save_trace, exc) from None
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
                spares=SpareConfig(max_spares=spares) if spares else None,
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
    try:
        write_json(json_path, report)
    except OSError as exc:
        raise _cannot_write("--json", json_path, exc) from None
    _print(trace, config, results, report, console)
    console.print(f"results: {json_path}")


def _cannot_write(option: str, target: Path, exc: OSError) -> typer.Exit:
    return _fail(f"{option} {target}: cannot write there: {exc.strerror or exc}", code=1)


def _check_writable(target: Path) -> None:
    """Raise OSError unless a file can be written at ``target`` (its folder is created, as
    the writers do; nothing is left at ``target`` itself)."""
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    nearest = next(folder for folder in target.parents if folder.exists())
    if not nearest.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)}: '{nearest}'")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    # The folder takes a new file (the JSON is written beside its target, then renamed).
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".probe"):
        pass


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
    *,
    instance_memory_mb: int,
    sizes_mb: tuple[int, ...],
    budget_mb: float | None,
    reserve_mb: float,
    concurrency: int,
    keep_alive_s: float,
    max_instances: int,
) -> GroupConfig:
    """The packed instances: the given memory, and by default a budget of what the reserve
    for the host and the runtime (``reserve_mb``, the live platform's by default) leaves of
    it."""
    options: dict[str, Any] = {
        "sizes_mb": sizes_mb,
        "concurrency": concurrency,
        "keep_alive_s": keep_alive_s,
        "max_instances": max_instances,
    }
    base = reserve_mb
    if instance_memory_mb <= base:
        raise ValueError(
            f"--instance-memory-mb {instance_memory_mb} leaves no room for models beside "
            f"the reserve for the host and the runtime ({base:g} MB)"
        )
    if budget_mb is None:
        return GroupConfig.for_instance(
            memory_mb=instance_memory_mb, runtime_base_mb=base, **options
        )
    if budget_mb > instance_memory_mb - base:
        raise ValueError(
            f"--budget-mb {budget_mb:g} does not fit in --instance-memory-mb "
            f"{instance_memory_mb} beside the reserve for the host and the runtime "
            f"({base:g} MB)"
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
    for name, what in (
        ("ideal_packing", "billed for model memory plus one runtime"),
        ("ideal_shaped", "in the group's shapes, repacked for free at every change"),
    ):
        ideal = reference.get(f"{name}_ratio_to_dedicated")
        if ideal is None:
            continue
        fitted = reference.get(f"{name}_ratio_to_dedicated_fitted")
        also = f", {fitted:.2f} x dedicated-fitted" if fitted is not None else ""
        console.print(
            "  reference: an ideal packer with dedicated's residency (each model resident while "
            f"its function was alive), {what}: {reference[f'{name}_gb_s']:,.0f} GB-s, "
            f"{ideal:.2f} x dedicated{also}"
        )
    for goal in report["goals"]:
        mark = "[green]met[/green]" if goal["met"] else "[red]not met[/red]"
        value = goal["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        console.print(f"  goal: {goal['goal']}: {shown} ({mark})")


def register(app: typer.Typer) -> None:
    """Add ``packer`` to the ``sealserve bench`` group."""
    app.command("packer")(_packer)
