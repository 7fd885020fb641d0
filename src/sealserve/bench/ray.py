"""``sealserve bench ray``: sealserve on a real multi-node Ray cluster on this machine.

One :class:`~sealserve.bench._ray_cluster.RayClusterStack` (a head and two worker nodes, each
its own raylet with one CPU and its own TEE platform daemon; replicas of one CPU, so at most one
per node; scale to zero), three models of three sizes and three users, the gateway in this
process.  In order:

* **routing**: from zero replicas, a burst of requests for the three models: the router's starts
  bring replicas up (the autoscaler adds what the starts wait for) and FnPacker's requests run
  on the instances of several nodes; which node served what;
* **trace**: a few minutes of a ``--synthetic`` trace replayed live, each request sent at its
  arrival time: the deployment scales from zero and back to zero (idle past the keep-alive),
  and the live GB-seconds, cold starts and latencies stand beside the simulator's for the same
  trace, policy and group (its costs measured in this run: warm inference, model load and cold
  start per model, from the answers' routing decisions); at the end, the GB-seconds must stop
  growing once no replica is left;
* **replica kill**: a steady load while the process of one ``SealedInstance`` replica is killed
  (SIGKILL; its instance host and runtime go with it): Ray Serve starts another, the requests
  it was serving are sent again by the clients; none may be lost;
* **node loss**: a steady load while a worker node is removed (its raylet and every process on
  it killed): the requests it was serving are sent again by the clients and served by the
  other nodes; none may be lost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final

import numpy as np
import typer
from rich.console import Console

from sealserve._stopping import descendants, describe
from sealserve.bench._common import environment, exit_on_sigterm, print_table, write_json
from sealserve.bench._load import SIZES, Job, SteadyLoad, mlp_model, plain_outputs, summarize
from sealserve.bench._ray_cluster import RayClusterStack

__all__ = ["RayBenchConfig", "register", "run_ray_bench"]

_ZERO_S: Final = 120.0


SCENARIOS: Final = ("routing", "trace", "replica-kill", "node-loss")
#: What a Ray Serve replica of the deployment is called in its process title.
_REPLICA_TITLE: Final = "ServeReplica:sealserve:SealedInstance"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayBenchConfig:
    trace_s: float = 180.0
    trace_seed: int = 7
    keep_alive_s: float = 10.0
    node_loss_observe_s: float = 20.0
    concurrency: int = 4
    scenarios: tuple[str, ...] = SCENARIOS


def _jobs(stack: RayClusterStack, users: int) -> tuple[list[Job], list[str], dict[str, bytes]]:
    from sealserve.client import KeyServicePin, User
    from sealserve.crypto import Identity, RequestKey

    base = stack.stack
    assert base.user is not None
    assert base.owner is not None
    pin = KeyServicePin(policy=base.keyservice_policy, trust=base.trust)
    principals = [base.user]
    for _ in range(users - 1):
        u = User(Identity.generate(), keyservice_url=base.keyservice_url, pin=pin)
        u.open()
        u.register()
        principals.append(u)
    jobs: list[Job] = []
    model_ids: list[str] = []
    onnx_of: dict[str, bytes] = {}
    rng = np.random.default_rng(5)
    for i, (size, (inputs, hidden, layers)) in enumerate(SIZES.items()):
        onnx = mlp_model(200 + i, inputs=inputs, hidden=hidden, layers=layers)
        model = base.add_model(f"ray-{size}", onnx)
        model_ids.append(model.model_id)
        onnx_of[model.model_id] = onnx
        for user in principals:
            key = model.request_key
            if user is not base.user:
                base.owner.grant(f"ray-{size}", user.principal_id, base.runtime_policy)
                key = RequestKey.generate()
                user.put_request_key(model.model_id, key, base.runtime_policy)
            x = {"X": rng.standard_normal((1, inputs)).astype(np.float32)}
            jobs.append(Job(model.model_id, user.principal_id, key, x, plain_outputs(onnx, x)))
    for user in principals[1:]:
        user.close()
    return jobs, model_ids, onnx_of


@dataclasses.dataclass
class _Sent:
    model_id: str
    latency_s: float
    kind: str
    load: bool
    ok: bool
    instance: int | None
    #: The instance's stage timings (ms), from the answer's Server-Timing.
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def _send(url: str, job: Job) -> _Sent:
    from sealserve.client import GatewayClient
    from sealserve.errors import SealserveError

    began = time.monotonic()
    try:
        with GatewayClient(url, timeout_s=120) as client:
            result = client.infer(
                job.model_id, job.inputs, user_id=job.user_id, key=job.key, retries=5
            )
    except SealserveError:
        return _Sent(job.model_id, time.monotonic() - began, "error", False, False, None)
    ok = bool(np.allclose(result.outputs["Y"], job.expected, rtol=1e-4, atol=1e-4))
    route = result.route
    return _Sent(
        job.model_id,
        time.monotonic() - began,
        route.kind if route else "?",
        bool(route and route.load),
        ok,
        result.instance_id,
        {str(k): float(v) for k, v in dict(result.timings).items()},
    )


def _routing(stack: RayClusterStack, jobs: Sequence[Job]) -> dict[str, Any]:
    burst = [jobs[i % len(jobs)] for i in range(len(jobs) * 4)]
    with concurrent.futures.ThreadPoolExecutor(len(burst)) as pool:
        sent = list(pool.map(lambda j: _send(stack.url, j), burst))
    nodes = stack.instance_nodes()
    by_node: dict[str, int] = {}
    for s in sent:
        node = nodes.get(s.instance) if s.instance is not None else None
        by_node[str(node)] = by_node.get(str(node), 0) + 1
    return {
        "requests": len(sent),
        "ok": sum(s.ok for s in sent),
        "requests_by_node": by_node,
        "nodes_used": sorted(k for k in by_node if k != "None"),
        "sent": sent,
    }


def _replay(
    stack: RayClusterStack, jobs: Sequence[Job], trace: Any, say: Callable[[str], None]
) -> list[tuple[float, _Sent]]:
    by_model: dict[str, list[Job]] = {}
    for job in jobs:
        by_model.setdefault(job.model_id, []).append(job)
    start = time.monotonic()
    futures: list[tuple[float, concurrent.futures.Future[_Sent]]] = []
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        for n, request in enumerate(trace.requests):
            delay = start + request.arrival_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            choices = by_model[request.model]
            job = choices[n % len(choices)]
            futures.append((request.arrival_s, pool.submit(_send, stack.url, job)))
            if n % 50 == 0:
                say(f"trace: {n}/{len(trace)} sent")
        return [(at, f.result()) for at, f in futures]


_INFER_STAGES: Final = ("input_unseal", "inference", "output_seal")
_LOAD_STAGES: Final = ("attestation_key_release", "model_fetch", "model_unseal_session")
_START_STAGES: Final = ("sandbox_start", "runtime_start")


def _stage_s(sent: _Sent, stages: Sequence[str]) -> float | None:
    values = [sent.timings[k] for k in stages if k in sent.timings]
    return sum(values) / 1000 if values else None


def _costs(sent: Sequence[_Sent], catalog: Any, model_ids: Sequence[str]) -> Any:
    """FnPacker's cost model as this run measured it: the instances' own stage timings
    (medians), so that no time a request spent queued counts as a cost."""
    from sealserve.packer import CostModel, ModelCosts

    models = {}
    for model in model_ids:
        mine = [s for s in sent if s.model_id == model and s.ok]
        infer = [v for s in mine if (v := _stage_s(s, _INFER_STAGES)) is not None]
        load = [v for s in mine if s.load and (v := _stage_s(s, _LOAD_STAGES)) is not None]
        models[model] = ModelCosts(
            load_s=max(0.001, statistics.median(load)) if load else 0.2,
            infer_s=max(0.0005, statistics.median(infer)) if infer else 0.05,
            memory_mb=catalog.memory_mb(model),
        )
    starts = [v for s in sent if s.ok and (v := _stage_s(s, _START_STAGES)) is not None]
    cold = max(0.1, statistics.median(starts)) if starts else 5.0
    return CostModel(cold_start_s=cold, runtime_base_mb=384.0, models=models, source="live")


def _trace(
    stack: RayClusterStack, jobs: Sequence[Job], model_ids: Sequence[str], config: RayBenchConfig,
    warm_up: Sequence[_Sent], say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    from sealserve.instance import ModelStore
    from sealserve.packer import SyntheticConfig, Trace, TraceRequest, make_policy, simulate
    from sealserve.platform import ModelCatalog

    synthetic = SyntheticConfig(
        models=len(model_ids),
        duration_s=config.trace_s,
        top_rate_per_s=1.0,
        tail_rate_per_s=0.05,
        burst_rate_per_s=0.3,
        mean_burst_s=15.0,
    )
    from sealserve.packer import synthetic_trace

    raw = synthetic_trace(config.trace_seed, synthetic)
    names = {m: model_ids[i] for i, m in enumerate(raw.models)}
    trace = Trace(tuple(TraceRequest(r.arrival_s - raw.requests[0].arrival_s, names[r.model])
                        for r in raw.requests), name=f"synthetic-{config.trace_seed}")  # fmt: skip
    before = stack.platform.stats()
    say(f"trace: {len(trace)} requests over {trace.duration_s:.0f} s")
    replayed = _replay(stack, jobs, trace, say)
    sent = [s for _, s in replayed]
    say("trace: waiting for the deployment to scale to zero")
    deadline = time.monotonic() + config.keep_alive_s + _ZERO_S
    while stack.platform.stats().instances and time.monotonic() < deadline:
        time.sleep(1.0)
    after = stack.platform.stats()
    time.sleep(5.0)
    later = stack.platform.stats()
    catalog = ModelCatalog(ModelStore(stack.stack.store.root))
    costs = _costs([*warm_up, *sent], catalog, model_ids)
    sim = simulate(
        trace,
        make_policy(stack.platform_config.policy),
        costs,
        config=stack.platform_config.group_config(sizes=False),
    )
    lat = sorted(s.latency_s for s in sent if s.ok)
    live = {
        "requests": len(sent),
        "ok": sum(s.ok for s in sent),
        "failed": sum(not s.ok for s in sent),
        "gb_s": round(after.gb_seconds - before.gb_seconds, 3),
        "cold_starts": int(after.counters["cold_starts"] - before.counters["cold_starts"]),
        "p50_ms": round(1000 * float(np.percentile(lat, 50)), 1) if lat else None,
        "p99_ms": round(1000 * float(np.percentile(lat, 99)), 1) if lat else None,
        "scaled_to_zero": not after.instances,
        "gb_s_growth_at_zero": round(later.gb_seconds - after.gb_seconds, 6),
    }
    summary = sim.summary()
    return {
        "trace": trace.summary(),
        "live": live,
        "simulated": {
            k: summary[k]
            for k in ("gb_s", "cold_starts", "p50_ms", "p99_ms", "requests", "peak_instances")
        },
        "costs": {
            "cold_start_s": round(costs.cold_start_s, 3),
            "models": {m: c.to_json() for m, c in costs.models.items()},
        },
    }


def _node_loss(
    stack: RayClusterStack, jobs: Sequence[Job], config: RayBenchConfig
) -> dict[str, Any]:
    load = SteadyLoad(stack.url, jobs, concurrency=config.concurrency, retry_window_s=60.0)
    load.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # warm, and every node holding an instance
            nodes = set(stack.instance_nodes().values())
            if len(load.records()) > 20 and {"w1"} <= nodes:
                break
            time.sleep(0.5)
        began = time.monotonic()
        victim_instances = [i for i, n in stack.instance_nodes().items() if n == "w1"]
        stack.remove_node("w1")
        time.sleep(config.node_loss_observe_s)
    finally:
        load.stop()
    summary = summarize(load.records(), since=began, until=time.monotonic())
    return {**summary, "removed": "w1", "instances_on_it": victim_instances}


def _replica_pids() -> list[int]:
    """The processes of the deployment's replicas (under this process's raylets)."""
    return sorted(p for p in descendants([os.getpid()]) if _REPLICA_TITLE in (describe(p) or ""))


def _replica_kill(
    stack: RayClusterStack, jobs: Sequence[Job], config: RayBenchConfig
) -> dict[str, Any]:
    load = SteadyLoad(stack.url, jobs, concurrency=config.concurrency, retry_window_s=60.0)
    load.start()
    victim: int | None = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # warm, and a replica serving
            replicas = _replica_pids()
            if len(load.records()) > 20 and replicas and stack.instance_nodes():
                victim = replicas[0]
                break
            time.sleep(0.5)
        began = time.monotonic()
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
        time.sleep(config.node_loss_observe_s)
    finally:
        load.stop()
    summary = summarize(load.records(), since=began, until=time.monotonic())
    return {**summary, "killed_pid": victim}


def run_ray_bench(
    config: RayBenchConfig,
    *,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from sealserve.platform import PlatformConfig

    say = progress or (lambda _m: None)
    workdir = Path(tempfile.mkdtemp(prefix="ssraybench-", dir=root))
    platform = PlatformConfig(
        policy="sesemi", max_instances=3, instance_concurrency=4,
        keep_alive_s=config.keep_alive_s, sizes_mb=(), start_timeout_s=30.0,
    )  # fmt: skip
    out: dict[str, Any] = {"benchmark": "ray", "environment": environment(),
                           "config": dataclasses.asdict(config)}  # fmt: skip
    stack = RayClusterStack(workdir, platform=platform, workers=2, min_replicas=0)
    try:
        say("starting the cluster (a head and two workers, a TEE daemon each)")
        stack.open()
        jobs, model_ids, _ = _jobs(stack, users=3)
        warm_up: list[_Sent] = []
        if "routing" in config.scenarios:
            say("routing: a burst from zero replicas")
            routing = _routing(stack, jobs)
            warm_up = routing.pop("sent")
            out["routing"] = routing
        if "trace" in config.scenarios:
            out["trace"] = _trace(stack, jobs, model_ids, config, warm_up, say)
        if "replica-kill" in config.scenarios:
            say("replica kill: a replica's process killed under load")
            out["replica_kill"] = _replica_kill(stack, jobs, config)
        if "node-loss" in config.scenarios:
            say("node loss: a worker removed under load")
            out["node_loss"] = _node_loss(stack, jobs, config)
    finally:
        with contextlib.suppress(Exception):
            stack.close()
    return out


def register(app: typer.Typer) -> None:
    @app.command("ray")
    def ray_command(
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write the results here as JSON.")
        ] = None,
        trace_s: Annotated[
            float, typer.Option(min=10.0, help="Length of the replayed synthetic trace (s).")
        ] = 180.0,
        synthetic: Annotated[int, typer.Option("--synthetic", min=0, help="Trace seed.")] = 7,
        scenario: Annotated[
            list[str] | None,
            typer.Option(help="Only these: routing, trace, replica-kill, node-loss (repeatable)."),
        ] = None,
    ) -> None:
        """sealserve on a multi-node Ray cluster on this machine: routing across nodes, a
        replayed trace from zero and back (live GB-s and cold starts beside the simulator's),
        a worker node removed under load."""
        exit_on_sigterm()
        console = Console()
        config = RayBenchConfig(
            trace_s=trace_s,
            trace_seed=synthetic,
            scenarios=tuple(scenario or SCENARIOS),
        )
        data = run_ray_bench(config, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
        if "routing" in data:
            r = data["routing"]
            console.print(f"routing: {r['ok']}/{r['requests']} answered; by node "
                          f"{r['requests_by_node']}")  # fmt: skip
        if "trace" in data:
            t = data["trace"]
            rows = [[k, t["live"].get(k), t["simulated"].get(k)]
                    for k in ("requests", "gb_s", "cold_starts", "p50_ms", "p99_ms")]  # fmt: skip
            print_table("trace: live on Ray vs the simulator", ("", "live", "simulated"), rows,
                        console=console)  # fmt: skip
            console.print(f"scaled to zero: {t['live']['scaled_to_zero']}; GB-s growth at zero "
                          f"over 5 s: {t['live']['gb_s_growth_at_zero']}")  # fmt: skip
        for key, what in (("replica_kill", "replica kill"), ("node_loss", "node loss")):
            if key in data:
                n = data[key]
                console.print(f"{what}: {n['ok']} ok, {n['retryable']} failed retryably, "
                              f"{n['failed']} failed, {n['lost']} lost; recovery "
                              f"{n['recovery_s']} s; {n['retried']} sent again")  # fmt: skip
        if json_path is not None:
            write_json(json_path, data)
        if data.get("node_loss", {}).get("lost") or data.get("replica_kill", {}).get("lost"):
            raise typer.Exit(1)
