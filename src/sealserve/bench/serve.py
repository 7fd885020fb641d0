"""``sealserve bench serve``: sealed serving through ``sealserve up`` vs plain onnxruntime serving.

Both servers get the same load from the same native load generator (``hey``, from Debian:
``apt-get install hey``), on this machine, in one run:

* **sealed**: ``sealserve up`` (the TEE daemon, the KeyService, the gateway and the local
  platform with at most one instance), a user's sealed input posted to the gateway's
  ``POST /v1/models/{owner}/{name}:infer``; the runtime unseals, infers and seals;
* **plain**: onnxruntime behind a minimal HTTP server (:mod:`._plain_server`: uvicorn and a bare
  ASGI callable), the same session options and intra-op threads, as many worker threads as the
  instance serves requests at once, the plaintext input in the same tensor container.

For each model (MobileNetV2, ResNet-50, MiniLM int8) and concurrency (1, 4, 8), the two sides
alternate run by run (which goes first alternating too) for ``--rounds`` rounds: throughput,
p50 and p99 latency, and CPU time per request summed over every process of each side (from
``/proc``: the gateway, the host, the runtime, the TEE daemon, the KeyService; the plain server)
and by process.  Each figure is a median over the rounds; the ratios are sealed / plain.

Then the **cold-start series**, on a deployment whose instances scale to zero after one
idle second: a request for a model with no instance alive (the client's wall time, and the
stages the answer reports), and right after it the first request for another model on the
instance it left ready (a load on a ready instance).

Goals (the issue's): throughput >= 0.9x plain at concurrency 1, 4 and 8 and p50 <= 1.15x at
concurrency 1 for MobileNetV2, >= 0.95x and <= 1.05x for ResNet-50; CPU per request <= 1.15x
plain's; a cold start of MobileNetV2 answered in <= 500 ms (p50), of ResNet-50 and MiniLM in
at most the model's own fetch + unseal + session + first inference plus 200 ms.
"""

from __future__ import annotations

import dataclasses
import http.client
import math
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

from sealserve.bench._common import environment, median, print_table, ratio, write_json

__all__ = [
    "ServeBenchConfig",
    "goals",
    "register",
    "run_serve_bench",
    "summary_rows",
    "update_costs",
]

MODELS: Final = ("mobilenet-v2", "resnet-50", "minilm-int8")
CONCURRENCY: Final = (1, 4, 8)
#: (throughput at least, p50 at concurrency 1 at most), sealed / plain, by model.
WARM_GOALS: Final = {"mobilenet-v2": (0.9, 1.15), "resnet-50": (0.95, 1.05)}
#: CPU per request, sealed / plain, at most (every model and concurrency).
CPU_GOAL: Final = 1.15
#: A cold start's p50 (ms) at most, by model.
COLD_GOAL_MS: Final = {"mobilenet-v2": 500.0}
#: Models whose cold start may take their own load and first inference plus this (ms).
COLD_MARGIN_MS: Final = {"resnet-50": 200.0, "minilm-int8": 200.0}
_LOAD_STAGES: Final = ("model_fetch", "model_unseal_session", "inference")
_ROLES: Final = ("gateway", "host", "runtime", "tee daemon", "keyservice", "plain", "other")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeBenchConfig:
    models: tuple[str, ...] = MODELS
    concurrency: tuple[int, ...] = CONCURRENCY
    #: Interleaved sealed/plain rounds per model and concurrency.
    rounds: int = 3
    #: Roughly how long one load-generator run lasts (its request count is set from this).
    seconds_per_run: float = 4.0
    cold_rounds: int = 3
    threads: int = 2
    #: Requests served at once: the instance's concurrency and the plain server's workers.
    workers: int = 4
    model_dir: Path | None = None

    @classmethod
    def quick(cls, **changes: Any) -> ServeBenchConfig:
        quick = {"rounds": 1, "seconds_per_run": 1.5, "cold_rounds": 1}
        return cls(**{**quick, **changes})

    def __post_init__(self) -> None:
        for name in ("rounds", "cold_rounds", "threads", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.seconds_per_run > 0:
            raise ValueError(f"seconds_per_run must be > 0, got {self.seconds_per_run!r}")
        if not self.models:
            raise ValueError("models must name at least one model")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError(f"concurrency must be levels >= 1, got {self.concurrency!r}")


@dataclasses.dataclass
class _Model:
    name: str
    path: Path
    inputs: dict[str, Any]
    published: Any = None


def run_serve_bench(config: ServeBenchConfig, *, console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); the JSON-ready results."""
    from sealserve.bench._serve_stack import find_load_generator, scratch_dir

    find_load_generator()  # before anything starts: say how to install it
    console = console or Console(stderr=True)
    with scratch_dir("sealserve-bench-serve-") as root:
        models = _build(config, root, console)
        warm = _warm(config, models, root, console)
        cold = _cold(config, models, root, console)
    results: dict[str, Any] = {
        "benchmark": "serve",
        "config": {
            "models": list(config.models),
            "concurrency": list(config.concurrency),
            "rounds": config.rounds,
            "seconds_per_run": config.seconds_per_run,
            "cold_rounds": config.cold_rounds,
            "threads": config.threads,
            "workers": config.workers,
            "load_generator": "hey",
        },
        "warm": warm,
        "cold": cold,
        "environment": environment(),
    }
    results["goals"] = goals(results)
    return results


def _build(config: ServeBenchConfig, root: Path, console: Console) -> list[_Model]:
    from sealserve.models import build, get_spec

    out: list[_Model] = []
    with console.status("building zoo models") as status:
        for name in config.models:
            status.update(f"building {name}")
            path = build(name, config.model_dir or root / "zoo")
            out.append(_Model(name, path, get_spec(name).example_inputs(0)))
    return out


# -- warm ------------------------------------------------------------------------------------


def _requests_for(latency_ms: float, concurrency: int, seconds: float) -> int:
    estimate = seconds * 1000.0 / max(latency_ms, 0.5) * concurrency
    return int(min(3000, max(8 * concurrency, 40, round(estimate))))


def _side_run(
    url: str,
    body: Path,
    headers: dict[str, str],
    requests: int,
    concurrency: int,
    root_pid: int,
) -> dict[str, Any]:
    from sealserve.bench._serve_stack import cpu_seconds, process_tree, run_hey

    pids = process_tree(root_pid)
    before = cpu_seconds(pids)
    run = run_hey(url, body=body, headers=headers, requests=requests, concurrency=concurrency)
    pids.update(process_tree(root_pid))
    after = cpu_seconds(pids)
    served = max(1, len(run.latencies_ms))
    by_role: dict[str, float] = {}
    for pid, seconds in after.items():
        used = seconds - before.get(pid, 0.0)
        if used > 0:
            role = pids[pid]
            by_role[role] = by_role.get(role, 0.0) + used * 1000 / served
    return {
        "throughput": run.throughput,
        "p50_ms": run.p(50),
        "p99_ms": run.p(99),
        "errors": run.errors,
        "statuses": run.statuses,
        "cpu_ms_per_request": sum(by_role.values()),
        "cpu_ms_by_process": by_role,
    }


def _warm(
    config: ServeBenchConfig, models: list[_Model], root: Path, console: Console
) -> dict[str, Any]:
    from sealserve.bench._serve_stack import PlainServer, UpDeployment, run_hey

    out: dict[str, Any] = {}
    with UpDeployment(root / "warm", keep_alive_s=3600.0) as up:
        for m in models:
            m.published = up.publish(m.name, m.path, m.inputs)
        for m in models:
            pub = m.published
            url, headers = up.infer_url(pub), up.headers(pub)
            with PlainServer(
                m.path, threads=config.threads, workers=config.workers, run_dir=root / "plain"
            ) as plain:
                with console.status(f"{m.name}: warming up both servers"):
                    _check_outputs(up, m, plain.url)
                    run_hey(url, body=pub.sealed_body, headers=headers, requests=20,
                            concurrency=1)  # fmt: skip
                    probe = run_hey(plain.url, body=pub.plain_body, headers={}, requests=20,
                                    concurrency=1)  # fmt: skip
                    stages = _stage_probe(up, pub, 30)
                runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
                for round_no in range(config.rounds):
                    for c in config.concurrency:
                        n = _requests_for(probe.p(50), c, config.seconds_per_run)
                        sides: list[tuple[str, str, Path, dict[str, str], int]] = [
                            ("plain", plain.url, pub.plain_body, {}, plain.pid),
                            ("sealed", url, pub.sealed_body, headers, up.pid),
                        ]
                        if round_no % 2:
                            sides.reverse()
                        for side, target, body, side_headers, pid in sides:
                            console.print(
                                f"  {m.name} c={c} round {round_no + 1}/{config.rounds}: "
                                f"{side} ({n} requests)",
                                highlight=False,
                            )
                            runs.setdefault((side, c), []).append(
                                _side_run(target, body, side_headers, n, c, pid)
                            )
            out[m.name] = {
                "stages_p50_ms": stages,
                "by_concurrency": {
                    str(c): _summarize(runs[("sealed", c)], runs[("plain", c)])
                    for c in config.concurrency
                },
            }
    return out


def _summarize(sealed: list[dict[str, Any]], plain: list[dict[str, Any]]) -> dict[str, Any]:
    def med(runs: list[dict[str, Any]], key: str) -> float:
        return median(r[key] for r in runs)

    def roles(runs: list[dict[str, Any]]) -> dict[str, float]:
        names = {role for r in runs for role in r["cpu_ms_by_process"]}
        return {
            n: round(median(r["cpu_ms_by_process"].get(n, 0.0) for r in runs), 3)
            for n in sorted(names, key=lambda n: _ROLES.index(n) if n in _ROLES else 99)
        }

    out: dict[str, Any] = {}
    for side, runs in (("sealed", sealed), ("plain", plain)):
        out[side] = {
            "throughput": round(med(runs, "throughput"), 2),
            "p50_ms": round(med(runs, "p50_ms"), 3),
            "p99_ms": round(med(runs, "p99_ms"), 3),
            "cpu_ms_per_request": round(med(runs, "cpu_ms_per_request"), 3),
            "cpu_ms_by_process": roles(runs),
            "errors": sum(r["errors"] for r in runs),
        }
    s, p = out["sealed"], out["plain"]
    out["throughput_ratio"] = round(ratio(s["throughput"], p["throughput"]), 3)
    out["p50_ratio"] = round(ratio(s["p50_ms"], p["p50_ms"]), 3)
    out["p99_ratio"] = round(ratio(s["p99_ms"], p["p99_ms"]), 3)
    out["cpu_ratio"] = round(ratio(s["cpu_ms_per_request"], p["cpu_ms_per_request"]), 3)
    out["round_throughput_ratios"] = [
        round(ratio(a["throughput"], b["throughput"]), 3)
        for a, b in zip(sealed, plain, strict=True)
    ]
    return out


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float = 120.0) -> Any:
    """One POST on a fresh connection: (wall ms, status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request("POST", parts.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        took = (time.perf_counter() - started) * 1000
        return took, answer.status, {k.lower(): v for k, v in answer.getheaders()}, data
    finally:
        conn.close()


def _check_outputs(up: Any, m: _Model, plain_url: str) -> None:
    """The sealed answer unseals to what plain onnxruntime answers (the benchmark measures
    real work on both sides)."""
    import numpy as np

    from sealserve.protocol import decode_tensors, unseal_output

    pub = m.published
    headers = {**up.headers(pub), "content-type": "application/octet-stream"}
    _, status, _, sealed = _post(up.infer_url(pub), pub.sealed_body.read_bytes(), headers)
    if status != 200:
        raise OSError(f"the gateway answered {status} for {m.name}: {sealed[:300]!r}")
    outputs = unseal_output(
        pub.request_key, sealed, model_id=pub.model_id, user_id=pub.user_id,
        request_id=pub.request_id,
    )  # fmt: skip
    _, status, _, plain = _post(plain_url, pub.plain_body.read_bytes(), {})
    if status != 200:
        raise OSError(f"the plain server answered {status} for {m.name}")
    expected = decode_tensors(plain)
    for name, value in expected.items():
        if not np.allclose(outputs[name], value, rtol=1e-4, atol=1e-4):
            raise OSError(f"{m.name}: the sealed and the plain outputs differ ({name})")


def _stage_probe(up: Any, pub: Any, count: int) -> dict[str, float]:
    """Stage timings (the answers' Server-Timing) of ``count`` sequential warm requests."""
    from sealserve.protocol import headers as hd

    headers = {**up.headers(pub), "content-type": "application/octet-stream"}
    body = pub.sealed_body.read_bytes()
    samples: list[dict[str, float]] = []
    client_ms: list[float] = []
    for _ in range(count):
        took, status, answer, _ = _post(up.infer_url(pub), body, headers)
        if status == 200:
            samples.append(hd.parse_server_timing(answer.get(hd.SERVER_TIMING_HEADER, "")))
            client_ms.append(took)
    names = sorted({k for s in samples for k in s})
    out = {n: round(median(s[n] for s in samples if n in s), 3) for n in names}
    out["client"] = round(median(client_ms), 3)
    return out


# -- cold ------------------------------------------------------------------------------------


def _one(up: Any, pub: Any) -> dict[str, Any]:
    from sealserve.protocol import headers as hd

    headers = {**up.headers(pub), "content-type": "application/octet-stream"}
    took, status, answer, body = _post(up.infer_url(pub), pub.sealed_body.read_bytes(), headers)
    if status != 200:
        raise OSError(f"a cold request for {pub.name} answered {status}: {body[:300]!r}")
    decision = answer.get(hd.DECISION_HEADER, "")
    return {
        "total_ms": round(took, 3),
        "stages": hd.parse_server_timing(answer.get(hd.SERVER_TIMING_HEADER, "")),
        "decision": decision,
    }


def _cold(
    config: ServeBenchConfig, models: list[_Model], root: Path, console: Console
) -> dict[str, Any]:
    from sealserve.bench._serve_stack import UpDeployment

    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        m.name: {"no_instance": [], "ready_instance": []} for m in models
    }
    with UpDeployment(root / "cold", keep_alive_s=1.0) as up:
        pubs = [up.publish(m.name, m.path, m.inputs) for m in models]
        for round_no in range(config.cold_rounds):
            for i, pub in enumerate(pubs):
                console.print(
                    f"  cold round {round_no + 1}/{config.cold_rounds}: {pub.name}",
                    highlight=False,
                )
                up.wait_for_no_instance()
                samples[pub.name]["no_instance"].append(_one(up, pub))
                if len(pubs) > 1:
                    other = pubs[(i + 1) % len(pubs)]
                    samples[other.name]["ready_instance"].append(_one(up, other))
        platform = up.platform()
        meters = {
            key: platform.get(key)
            for key in ("gb_seconds", "spare_gb_seconds", "instance_seconds", "counters")
        }
    out: dict[str, Any] = {"platform_meters": meters}
    for name, series in samples.items():
        out[name] = {kind: _cold_summary(runs) for kind, runs in series.items() if runs}
    return out


def _cold_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({k for r in runs for k in r["stages"]})
    return {
        "total_p50_ms": round(median(r["total_ms"] for r in runs), 3),
        "samples_ms": [r["total_ms"] for r in runs],
        "stages_p50_ms": {
            n: round(median(r["stages"][n] for r in runs if n in r["stages"]), 3) for n in names
        },
        "decisions": [r["decision"] for r in runs],
    }


# -- goals and report ------------------------------------------------------------------------


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    warm = results["warm"]
    for model, (thr_goal, p50_goal) in WARM_GOALS.items():
        if model not in warm:
            continue
        for c, figures in warm[model]["by_concurrency"].items():
            out.append(_goal(f"{model} c={c} throughput sealed/plain", figures["throughput_ratio"],
                             ">=", thr_goal))  # fmt: skip
            if c == "1":
                out.append(_goal(f"{model} c=1 p50 sealed/plain", figures["p50_ratio"], "<=",
                                 p50_goal))  # fmt: skip
    for model, figures in warm.items():
        for c, f in figures["by_concurrency"].items():
            out.append(_goal(f"{model} c={c} CPU per request sealed/plain", f["cpu_ratio"], "<=",
                             CPU_GOAL))  # fmt: skip
    cold = results["cold"]
    for model, limit in COLD_GOAL_MS.items():
        if model in cold and "no_instance" in cold[model]:
            out.append(_goal(f"{model} cold start p50 ms", cold[model]["no_instance"]
                             ["total_p50_ms"], "<=", limit))  # fmt: skip
    for model, margin in COLD_MARGIN_MS.items():
        if model in cold and "no_instance" in cold[model]:
            series = cold[model]["no_instance"]
            own = sum(series["stages_p50_ms"].get(s, 0.0) for s in _LOAD_STAGES)
            out.append(_goal(f"{model} cold start p50 ms (own load + {margin:g} ms)",
                             series["total_p50_ms"], "<=", round(own + margin, 1)))  # fmt: skip
    return out


def _goal(name: str, value: float, op: str, limit: float) -> dict[str, Any]:
    met = (value >= limit if op == ">=" else value <= limit) if not math.isnan(value) else False
    return {"goal": f"{name} {op} {limit:g}", "value": value, "met": bool(met)}


def _report(results: dict[str, Any], console: Console) -> None:
    rows, ratios = [], []
    for model, figures in results["warm"].items():
        for c, f in figures["by_concurrency"].items():
            s, p = f["sealed"], f["plain"]
            rows.append([
                model, c, p["throughput"], s["throughput"], p["p50_ms"], s["p50_ms"],
                p["p99_ms"], s["p99_ms"], p["cpu_ms_per_request"], s["cpu_ms_per_request"],
            ])  # fmt: skip
            ratios.append([model, c, f["throughput_ratio"], f["p50_ratio"], f["p99_ratio"],
                           f["cpu_ratio"]])  # fmt: skip
    print_table(
        "warm serving: sealed (sealserve up, one instance) vs plain onnxruntime (medians)",
        ["model", "c", "plain req/s", "sealed req/s", "plain p50", "sealed p50", "plain p99",
         "sealed p99", "plain CPU", "sealed CPU"],
        rows,
        console=console,
    )  # fmt: skip
    print_table(
        "sealed / plain (the goals: throughput >= 0.9 at every c and p50 <= 1.15 at c=1 for "
        "mobilenet-v2, >= 0.95 and <= 1.05 for resnet-50; CPU per request <= 1.15)",
        ["model", "c", "throughput", "p50", "p99", "CPU per request"],
        ratios,
        console=console,
    )
    cpu_rows = []
    for model, figures in results["warm"].items():
        for c, f in figures["by_concurrency"].items():
            by = f["sealed"]["cpu_ms_by_process"]
            cpu_rows.append([model, c, *(by.get(r, 0.0) for r in _ROLES[:5]),
                             f["plain"]["cpu_ms_per_request"]])  # fmt: skip
    print_table(
        "CPU ms per request by process (sealed side; the plain server's total last)",
        ["model", "c", *_ROLES[:5], "plain"],
        cpu_rows,
        console=console,
    )
    stage_names = sorted({s for f in results["warm"].values() for s in f["stages_p50_ms"]})
    print_table(
        "a warm sealed request's stages (p50 ms, 30 sequential requests)",
        ["stage", *results["warm"]],
        [[s, *(f["stages_p50_ms"].get(s, math.nan) for f in results["warm"].values())]
         for s in stage_names],
        console=console,
    )  # fmt: skip
    cold_rows = []
    for model, series in results["cold"].items():
        if model == "platform_meters":
            continue
        for kind, f in series.items():
            st = f["stages_p50_ms"]
            cold_rows.append([model, kind, f["total_p50_ms"],
                              *(st.get(s, math.nan) for s in _COLD_COLUMNS)])  # fmt: skip
    print_table(
        "cold starts (p50 ms): no instance alive, and a new model on a ready instance",
        ["model", "series", "client total", *_COLD_COLUMNS],
        cold_rows,
        console=console,
    )
    for g in results["goals"]:
        console.print(f"goal {g['goal']}: {g['value']} ({'met' if g['met'] else 'MISSED'})")


_COLD_COLUMNS: Final = (
    "cold_start", "sandbox_start", "runtime_start", "attestation_key_release", "model_fetch",
    "model_unseal_session", "inference", "model_load",
)  # fmt: skip


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_command(
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write the results here as JSON.")
        ] = None,
        quick: Annotated[bool, typer.Option("--quick", help="One round, short runs.")] = False,
        models: Annotated[
            list[str] | None,
            typer.Option("--model", help=f"Only these models (repeatable): {', '.join(MODELS)}."),
        ] = None,
        concurrency: Annotated[
            str, typer.Option(help="Comma-separated concurrency levels.")
        ] = ",".join(str(c) for c in CONCURRENCY),
        rounds: Annotated[int | None, typer.Option(min=1, help="Interleaved rounds.")] = None,
        costs_update: Annotated[
            Path | None,
            typer.Option(
                "--costs-update",
                help="A cost model (bench runtime --costs-out) whose cold start to replace with "
                "the one measured here (the platform's: host and runtime forked from their "
                "templates), for bench packer.",
            ),
        ] = None,
        cold_rounds: Annotated[
            int | None, typer.Option(min=1, help="Rounds of the cold-start series.")
        ] = None,
        model_dir: Annotated[
            Path | None, typer.Option("--model-dir", help="Build (or reuse) the zoo models here.")
        ] = None,
    ) -> None:
        """Sealed serving through `sealserve up` vs plain onnxruntime behind a minimal HTTP
        server, under the same load generator (hey), with the cold-start series."""
        console = Console()
        try:
            levels = tuple(int(part) for part in concurrency.split(",") if part.strip())
        except ValueError:
            typer.echo(f"error: --concurrency has value {concurrency!r}; e.g. 1,4,8", err=True)
            raise typer.Exit(2) from None
        changes: dict[str, Any] = {"concurrency": levels, "model_dir": model_dir}
        if models:
            changes["models"] = tuple(models)
        if rounds is not None:
            changes["rounds"] = rounds
        if cold_rounds is not None:
            changes["cold_rounds"] = cold_rounds
        try:
            config = ServeBenchConfig.quick(**changes) if quick else ServeBenchConfig(**changes)
            results = run_serve_bench(config, console=Console(stderr=True))
        except FileNotFoundError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except (ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        _report(results, console)
        if json_path is not None:
            write_json(json_path, results)
            console.print(f"wrote {json_path}")
        if costs_update is not None:
            try:
                cold_ms = update_costs(costs_update, results)
            except (OSError, ValueError) as exc:
                typer.echo(f"error: --costs-update {costs_update}: {exc}", err=True)
                raise typer.Exit(1) from None
            console.print(f"cold start in {costs_update}: {cold_ms:.1f} ms")


def update_costs(path: Path, results: dict[str, Any]) -> float:
    """Replace the cold start of the cost model at ``path`` with the median ``cold_start``
    (the platform's start of an instance, to ready) of the no-instance series; its ms."""
    from sealserve.packer import CostModel

    colds = [
        series["no_instance"]["stages_p50_ms"]["cold_start"]
        for name, series in results["cold"].items()
        if name != "platform_meters"
        and "no_instance" in series
        and "cold_start" in series["no_instance"]["stages_p50_ms"]
    ]
    if not colds:
        raise ValueError("the cold-start series measured no cold start")
    model = CostModel.load(path)
    cold_ms = median(colds)
    methods = dict(model.methods)
    methods["cold_start_ms"] = (
        "bench serve: median over models of the platform's start of an instance (the host "
        "forked from the host template, the runtime from the TEE platform's measured template "
        "and attested) until it is ready, for a request with no instance alive"
    )
    dataclasses.replace(model, cold_start_s=cold_ms / 1000, methods=methods).save(path)
    return cold_ms


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The top-level figures ``sealserve bench all`` prints."""
    rows: list[tuple[str, str, Any]] = []
    for model, figures in doc.get("warm", {}).items():
        for c, f in figures.get("by_concurrency", {}).items():
            rows.append(("serve", f"{model} c={c} throughput sealed/plain", f["throughput_ratio"]))
            rows.append(("serve", f"{model} c={c} CPU sealed/plain", f["cpu_ratio"]))
    for model, series in doc.get("cold", {}).items():
        if isinstance(series, dict) and "no_instance" in series:
            rows.append(
                ("serve", f"{model} cold start p50 ms", series["no_instance"]["total_p50_ms"])
            )
    return rows
