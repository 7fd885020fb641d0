"""``sealserve bench keyservice``: attested key release round trips against a trivial request.

In one run, on loopback, against a real KeyService launched through an embedded simulated
platform (SQLite in a temporary directory, ``--workers`` processes on one port):

* **release**: ``concurrency`` clients, each a simulated runtime with its own HPKE key pair,
  loop over the whole round trip, every step timed: ``POST /v1/challenges``, fresh evidence
  from the platform whose report_data binds the runtime's key and that nonce (for the
  ``attest-probe`` entry's measurement, issued in this process as a runtime's platform
  would), ``POST /v1/releases``, then open the release (check the KeyService's signature,
  the nonce and the key id, unwrap the keys);
* **trivial**: the same clients, same connection pools, ``GET /healthz`` on the same server;
* **release of each evidence kind** (``kinds``): the same round trip with SEV-SNP, TPM-quote
  and Azure-CVM evidence instead of the simulated platform's, each for its own granted pair
  whose policy pins that kind's reference values.  The hardware is synthetic (this machine has
  none; :mod:`sealserve.bench._keyservice_kinds`) and the KeyService is launched trusting its
  roots; the server verifies each exactly as it would real evidence.  Beside releases/s and
  the server's CPU per release, ``verify_us`` is the KeyService's verifier alone on each kind,
  timed in this process.

Phases alternate for ``rounds`` rounds (interleaved, so a noisy neighbour hurts both); the
figures are over all rounds.  The CPU the server processes and this process (the clients) spend
per request is read from the kernel for each phase, and each step of a release is also timed
on its own in this process (``steps_us``), so the JSON says where a release's CPU goes.  Both
cases also run with one client at a time (``unloaded``): with no queueing, what one round trip
is made of.  With 8 clients on a busy server, a p50 is mostly queueing (Little's law: about
clients / throughput), so the loaded p50 ratio is about the ratio of the two cases' costs.

The JSON has, at its top level, ``releases_per_s`` (goal >= 300), ``p50_ms``, ``p99_ms``,
``trivial_p50_ms`` and ``p50_ratio`` (goal <= 3).  Rate limits are raised for the run (one
client address would otherwise be throttled, which is policy, not capacity).  Every response
must be a 200 and every release must open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

from sealserve.bench._common import (
    environment,
    interleaved,
    median,
    percentile,
    print_table,
    ratio,
    write_json,
)

__all__ = ["KeyServiceBenchConfig", "register", "run_keyservice_bench"]

RELEASES_GOAL: Final = 300.0
P50_RATIO_GOAL: Final = 3.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyServiceBenchConfig:
    concurrency: int = 8
    requests_per_round: int = 400
    rounds: int = 3
    warmup: int = 100
    #: KeyService processes sharing the port.
    workers: int = 1
    #: Round trips of each case with one client, alternating (0: skip them).
    unloaded: int = 200
    #: Releases of the in-process step timing (0: skip it).
    step_count: int = 300
    #: Also release with SEV-SNP, TPM and Azure-CVM evidence, interleaved with the rest.
    kinds: bool = True
    #: Verifications of each kind in the in-process verification timing, per round.
    verify_count: int = 200

    @classmethod
    def quick(cls) -> KeyServiceBenchConfig:
        """A short run for smoke tests and A/B checks: fewer round trips, the simulated
        evidence only, no one-client phase."""
        return cls(
            requests_per_round=150, warmup=50, unloaded=0, step_count=100, kinds=False,
            verify_count=0,
        )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("concurrency", "requests_per_round", "rounds", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup", "step_count", "unloaded", "verify_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclasses.dataclass
class _Phase:
    latencies_s: list[float]
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float


class _Bench:
    """The KeyService under test, a granted (user, model) pair, and the client side."""

    def __init__(self, root: Path, config: KeyServiceBenchConfig) -> None:
        from sealserve.attest import Policy
        from sealserve.attest.tee import SimulatedPlatform
        from sealserve.bench._keyservice_kinds import KINDS, HardwareKinds
        from sealserve.client import KeyServicePin, Owner, User
        from sealserve.config import KeyServiceSettings
        from sealserve.crypto import Identity, RequestKey, SymmetricKey
        from sealserve.keyservice._launch import launch_keyservice

        self.config = config
        self.platform = SimulatedPlatform(data_dir=root / "platform").open()
        pub = root / "platform.pub"
        pub.write_text(self.platform.public_key_bytes.hex() + "\n")
        self.hardware = HardwareKinds(root / "hardware", self.platform)
        self.kinds = KINDS if config.kinds else KINDS[:1]
        settings = KeyServiceSettings(
            port=0,
            db_url=f"sqlite+pysqlite:///{root / 'keyservice.db'}",
            rate_limit_per_s=1e6,
            rate_limit_burst=1_000_000,
            **(self.hardware.settings_changes() if config.kinds else {}),
        )
        self.service = launch_keyservice(
            self.platform,
            settings,
            data_dir=root / "data",
            platform_key=pub,
            log_level="WARNING",
            workers=config.workers,
        )
        self.url = self.service.url
        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({self.service.measurement})),
            trust=self.platform.trust_anchors(),
        )
        self.pin = pin
        owner = Owner(Identity.generate(), keyservice_url=self.url, pin=pin)
        user = User(Identity.generate(), keyservice_url=self.url, pin=pin)
        #: The granted model of each evidence kind (the simulated one is "bench-model").
        self.models: dict[str, str] = {}
        with owner, user:
            owner.register()
            user.register()
            for kind in self.kinds:
                name = "bench-model" if kind == "simulated" else f"bench-model-{kind}"
                runtime_policy = self.hardware.policy(kind)
                self.models[kind] = owner.model_id(name)
                owner.put_model_key(name, SymmetricKey.generate())
                owner.grant(name, user.principal_id, runtime_policy)
                user.put_request_key(self.models[kind], RequestKey.generate(), runtime_policy)
        self.model_id = self.models["simulated"]
        self.user_id = user.principal_id

    def close(self) -> None:
        try:
            self.service.stop()
        finally:
            self.platform.close()

    def server_cpu_s(self) -> float:
        """CPU seconds the KeyService processes have used (NaN where /proc is not there)."""
        return sum(_process_cpu_s(p.pid) for p in self.service.processes)

    # -- the client side --------------------------------------------------------------------

    def run_phase(
        self, kind: str, count: int, *, concurrency: int | None = None, evidence: str = "simulated"
    ) -> _Phase:
        """``kind`` "release" (with ``evidence`` of that kind) or "trivial"."""
        return asyncio.run(
            self._phase(kind, count, concurrency or self.config.concurrency, evidence)
        )

    async def _phase(self, kind: str, count: int, concurrency: int, evidence_kind: str) -> _Phase:
        import aiohttp

        from sealserve.protocol import (
            ReleaseSession,
            attestation_nonce,
            parse_challenge,
            verify_keyservice,
            wire,
        )

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(self.url, connector=connector) as http:
            nonce = attestation_nonce()
            async with http.get(f"/v1/attestation?nonce={wire.b64encode(nonce)}") as r:
                attestation = await r.read()
            attested = verify_keyservice(
                attestation,
                nonce=nonce,
                policy=self.pin.policy,
                trust=self.pin.trust,
                now=time.time(),
            )
            sessions = [ReleaseSession(keyservice=attested) for _ in range(concurrency)]
            model_id = self.models[evidence_kind]
            pairs = [(self.user_id, model_id)]
            key = (self.user_id, model_id)
            make_evidence = self.hardware.maker(evidence_kind)
            latencies: list[float] = []
            remaining = count
            json_headers = {"content-type": "application/json"}

            async def release(session: ReleaseSession) -> None:
                t0 = time.perf_counter()
                async with http.post("/v1/challenges") as r:
                    challenge = parse_challenge(await r.read())
                evidence = make_evidence(session.report_data(challenge))
                body = session.request_body(nonce=challenge, evidence=evidence, pairs=pairs)
                async with http.post("/v1/releases", data=body, headers=json_headers) as r:
                    status, content = r.status, await r.read()
                if status != 200:
                    raise RuntimeError(f"release answered {status}")
                if key not in session.open(content, nonce=challenge).keys:
                    raise RuntimeError("the release does not hold the pair's keys")
                latencies.append(time.perf_counter() - t0)

            async def trivial(_session: ReleaseSession) -> None:
                t0 = time.perf_counter()
                async with http.get("/healthz") as r:
                    status = r.status
                    await r.read()
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"healthz answered {status}")

            op = release if kind == "release" else trivial

            async def worker(session: ReleaseSession) -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await op(session)

            server0, client0 = self.server_cpu_s(), time.process_time()
            started = time.perf_counter()
            await asyncio.gather(*(worker(s) for s in sessions))
            wall = time.perf_counter() - started
            server_cpu = self.server_cpu_s() - server0
            client_cpu = time.process_time() - client0
        return _Phase(latencies, wall, server_cpu, client_cpu)


def _process_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_keyservice_bench(config: KeyServiceBenchConfig, *, progress: Any = None) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring)."""
    from sealserve.bench._keyservice_kinds import measure_verification
    from sealserve.bench._keyservice_steps import measure_steps

    with tempfile.TemporaryDirectory(prefix="sealserve-bench-ks-") as tmp:
        bench = _Bench(Path(tmp), config)
        hardware = [k for k in bench.kinds if k != "simulated"]
        try:
            if config.warmup:
                bench.run_phase("release", config.warmup)
                bench.run_phase("trivial", config.warmup)
                for kind in hardware:
                    bench.run_phase("release", config.warmup // 4 or 1, evidence=kind)
            cases = {
                "release": lambda: bench.run_phase("release", config.requests_per_round),
                "trivial": lambda: bench.run_phase("trivial", config.requests_per_round),
            }
            for kind in hardware:
                cases[f"release:{kind}"] = _release_of(bench, kind, config.requests_per_round)
            results = interleaved(cases, repeats=config.rounds, progress=progress)
            unloaded: dict[str, list[_Phase]] = {"release": [], "trivial": []}
            if config.unloaded:
                if progress is not None:
                    progress("one client at a time")
                unloaded = interleaved(
                    {
                        "release": lambda: bench.run_phase("release", 50, concurrency=1),
                        "trivial": lambda: bench.run_phase("trivial", 50, concurrency=1),
                    },
                    repeats=max(1, config.unloaded // 50),
                )
            if progress is not None and config.kinds:
                progress("timing the evidence verifier on each kind")
            verification = (
                measure_verification(bench.hardware, count=config.verify_count)
                if config.kinds and config.verify_count
                else {}
            )
        finally:
            bench.close()
        if progress is not None and config.step_count:
            progress("timing each step of a release")
        steps = (
            measure_steps(Path(tmp) / "steps", count=config.step_count) if config.step_count else {}
        )
    release = [x for phase in results["release"] for x in phase.latencies_s]
    trivial = [x for phase in results["trivial"] for x in phase.latencies_s]
    release_wall = sum(p.wall_s for p in results["release"])
    trivial_wall = sum(p.wall_s for p in results["trivial"])
    per_round = [len(p.latencies_s) / p.wall_s for p in results["release"]]
    p50 = percentile(release, 50) * 1e3
    trivial_p50 = percentile(trivial, 50) * 1e3
    releases_per_s = len(release) / release_wall if release_wall else math.nan
    cpu = {kind: _cpu_ms(results[kind]) for kind in ("release", "trivial")}
    if steps:
        # What the server spent per release over HTTP beyond its steps.
        rest_us = 1e3 * cpu["release"]["server_ms"] - sum(steps["server"].values())
        steps["server_rest"] = {"http_loop_threads": rest_us}
    kinds = _kinds(results, verification, releases_per_s, cpu["release"])
    return {
        "benchmark": "keyservice",
        "releases_per_s": releases_per_s,
        "p50_ms": p50,
        "p99_ms": percentile(release, 99) * 1e3,
        "trivial_p50_ms": trivial_p50,
        "trivial_p99_ms": percentile(trivial, 99) * 1e3,
        "trivial_requests_per_s": len(trivial) / trivial_wall if trivial_wall else math.nan,
        "p50_ratio": ratio(p50, trivial_p50),
        "releases_per_s_by_round": per_round,
        "unloaded": _unloaded(unloaded),
        "cpu_ms_per_request": cpu,
        "steps_us": steps,
        "kinds": kinds,
        "goals": {
            "releases_per_s": RELEASES_GOAL,
            "p50_ratio": P50_RATIO_GOAL,
            "releases_per_s_met": releases_per_s >= RELEASES_GOAL,
            "p50_ratio_met": ratio(p50, trivial_p50) <= P50_RATIO_GOAL,
            "met": releases_per_s >= RELEASES_GOAL and ratio(p50, trivial_p50) <= P50_RATIO_GOAL,
        },
        "config": dataclasses.asdict(config),
        "method": (
            "challenge + fresh platform evidence + release + open (signature, unwrap) per round "
            "trip, concurrent clients on loopback, against GET /healthz on the same server; "
            "phases interleaved; CPU per request from the kernel for the server processes and "
            "this process; kinds: the same round trip with synthetic SEV-SNP, TPM-quote and "
            "Azure-CVM evidence (real layouts and algorithms, test roots the KeyService is "
            "launched trusting), interleaved with the simulated one, and the KeyService's "
            "evidence verifier alone per kind in this process (CPU time)"
        ),
        "environment": environment(),
    }


def _release_of(bench: _Bench, kind: str, count: int) -> Any:
    return lambda: bench.run_phase("release", count, evidence=kind)


def _kinds(
    results: dict[str, list[_Phase]],
    verification: dict[str, dict[str, float]],
    simulated_per_s: float,
    simulated_cpu: dict[str, float],
) -> dict[str, dict[str, float]]:
    """Per evidence kind: releases/s, p50, CPU per release, verification cost, and the ratios
    to the simulated kind measured in the same run."""
    out: dict[str, dict[str, float]] = {}
    base_verify = verification.get("simulated", {}).get("verify_us", math.nan)
    for case, phases in results.items():
        if case == "trivial":
            continue
        kind = "simulated" if case == "release" else case.split(":", 1)[1]
        latencies = [x for p in phases for x in p.latencies_s]
        wall = sum(p.wall_s for p in phases)
        per_s = len(latencies) / wall if wall else math.nan
        cpu = _cpu_ms(phases)
        figures = {
            "releases_per_s": per_s,
            "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3,
            "server_cpu_ms": cpu["server_ms"],
            "client_cpu_ms": cpu["client_ms"],
            "releases_per_s_ratio": ratio(per_s, simulated_per_s),
            "server_cpu_ratio": ratio(cpu["server_ms"], simulated_cpu["server_ms"]),
        }
        if kind in verification:
            figures["verify_us"] = verification[kind]["verify_us"]
            figures["evidence_us"] = verification[kind]["evidence_us"]
            figures["verify_ratio"] = ratio(verification[kind]["verify_us"], base_verify)
        out[kind] = figures
    return out


def _unloaded(phases: dict[str, list[_Phase]]) -> dict[str, float]:
    """p50s with one client (no queueing: the latency a round trip is made of)."""
    release = [x for p in phases["release"] for x in p.latencies_s]
    trivial = [x for p in phases["trivial"] for x in p.latencies_s]
    p50 = percentile(release, 50) * 1e3
    trivial_p50 = percentile(trivial, 50) * 1e3
    return {"p50_ms": p50, "trivial_p50_ms": trivial_p50, "p50_ratio": ratio(p50, trivial_p50)}


def _cpu_ms(phases: list[_Phase]) -> dict[str, float]:
    """Median over rounds of the CPU milliseconds per request, server and client."""
    return {
        "server_ms": median(p.server_cpu_s / len(p.latencies_s) * 1e3 for p in phases),
        "client_ms": median(p.client_cpu_s / len(p.latencies_s) * 1e3 for p in phases),
    }


def _keyservice(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures to this JSON file.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Concurrent clients.")] = 8,
    requests: Annotated[int, typer.Option(help="Round trips per phase and round.")] = 400,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds.")] = 3,
    workers: Annotated[int, typer.Option(help="KeyService processes sharing the port.")] = 1,
    kinds: Annotated[
        bool,
        typer.Option(help="Also release with SEV-SNP, TPM and Azure-CVM evidence (synthetic)."),
    ] = True,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="150 round trips a round, simulated evidence only (a smoke run)."
        ),
    ] = False,
) -> None:
    """Key release round trips (challenge + release) vs a trivial endpoint, same server; and
    the same release with each kind of hardware evidence."""
    console = Console(stderr=True)
    try:
        if quick:
            config = dataclasses.replace(
                KeyServiceBenchConfig.quick(), concurrency=concurrency, workers=workers
            )
        else:
            config = KeyServiceBenchConfig(
                concurrency=concurrency,
                requests_per_round=requests,
                rounds=rounds,
                workers=workers,
                kinds=kinds,
            )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with console.status("starting the KeyService through the simulated platform") as status:
        result = run_keyservice_bench(config, progress=lambda text: status.update(text))
    cpu = result["cpu_ms_per_request"]
    print_table(
        f"sealserve bench keyservice ({workers} KeyService processes, {concurrency} clients)",
        ["case", "per s", "p50 ms", "p99 ms", "ratio to trivial (p50)", "server CPU ms",
         "client CPU ms"],
        [
            ["release (challenge + release)", result["releases_per_s"], result["p50_ms"],
             result["p99_ms"], result["p50_ratio"], cpu["release"]["server_ms"],
             cpu["release"]["client_ms"]],
            ["trivial (GET /healthz)", result["trivial_requests_per_s"],
             result["trivial_p50_ms"], result["trivial_p99_ms"], 1.0,
             cpu["trivial"]["server_ms"], cpu["trivial"]["client_ms"]],
        ],
    )  # fmt: skip
    steps = result["steps_us"]
    if steps:
        rows = [[f"server: {k}", v] for k, v in steps["server"].items()]
        rows += [["server: HTTP, event loop, threads", steps["server_rest"]["http_loop_threads"]]]
        rows += [[f"client: {k}", v] for k, v in steps["client"].items()]
        rows += [
            ["server: a revocation poll (not a release step)", v] for v in steps["poll"].values()
        ]
        print_table("CPU per release, by step (us)", ["step", "us"], rows)
    by_kind = result["kinds"]
    if len(by_kind) > 1:
        print_table(
            "release by evidence kind (hardware kinds synthetic; ratios to simulated, same run)",
            ["kind", "per s", "ratio", "p50 ms", "server CPU ms", "verify us", "verify ratio"],
            [
                [kind, f["releases_per_s"], f["releases_per_s_ratio"], f["p50_ms"],
                 f["server_cpu_ms"], f.get("verify_us", math.nan),
                 f.get("verify_ratio", math.nan)]
                for kind, f in by_kind.items()
            ],
        )  # fmt: skip
    unloaded = result["unloaded"]
    if unloaded["p50_ms"] == unloaded["p50_ms"]:  # not NaN: it was measured
        typer.echo(
            f"one client at a time: release p50 {unloaded['p50_ms']:.2f} ms, trivial p50 "
            f"{unloaded['trivial_p50_ms']:.2f} ms ({unloaded['p50_ratio']:.1f}x)"
        )
    goals = result["goals"]
    typer.echo(
        f"goals: >= {RELEASES_GOAL:.0f} releases/s: "
        f"{'met' if goals['releases_per_s_met'] else 'NOT met'}; "
        f"p50 <= {P50_RATIO_GOAL:.0f}x trivial: {'met' if goals['p50_ratio_met'] else 'NOT met'}"
    )
    if json_path is not None:
        write_json(json_path, result)
        typer.echo(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``keyservice`` to the ``sealserve bench`` group."""
    app.command("keyservice")(_keyservice)
