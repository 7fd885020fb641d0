"""``sealserve bench keyservice``: attested key release round trips against a trivial request.

In one run, on loopback, against a real KeyService launched through an embedded simulated
platform (SQLite in a temporary directory):

* **release**: ``concurrency`` clients each loop over challenge -> evidence -> release, the
  whole round trip timed (the evidence is the platform's, for the ``attest-probe`` entry's
  measurement, issued in this process as a runtime's platform would);
* **trivial**: the same clients, same connection pools, ``GET /healthz`` on the same server.

Phases alternate for ``rounds`` rounds (interleaved, so a noisy neighbour hurts both); the
figures are over all rounds.  The JSON has, at its top level, ``releases_per_s`` (goal >= 300),
``p50_ms``, ``p99_ms``, ``trivial_p50_ms`` and ``p50_ratio`` (goal <= 3).  Rate limits are
raised for the run (one client address would otherwise be throttled, which is policy, not
capacity).  Every response must be a 200, and one release in 16 is opened in full (signature,
nonce, unwrap) outside the timed span, to keep the client's share of the 2 cores small.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

from sealserve.bench._common import (
    environment,
    interleaved,
    percentile,
    print_table,
    ratio,
    write_json,
)

__all__ = ["KeyServiceBenchConfig", "register", "run_keyservice_bench"]

RELEASES_GOAL: Final = 300.0
#: Every this many releases one is opened and checked in full by the client.
_OPEN_EVERY: Final = 16
P50_RATIO_GOAL: Final = 3.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyServiceBenchConfig:
    concurrency: int = 8
    requests_per_round: int = 400
    rounds: int = 3
    warmup: int = 100

    def __post_init__(self) -> None:
        for name in ("concurrency", "requests_per_round", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")


@dataclasses.dataclass
class _Phase:
    latencies_s: list[float]
    wall_s: float


class _Bench:
    """The KeyService under test, a granted (user, model) pair, and the client side."""

    def __init__(self, root: Path, config: KeyServiceBenchConfig) -> None:
        from sealserve.attest import Policy, SimulatedPlatform
        from sealserve.client import KeyServicePin, Owner, User
        from sealserve.config import KeyServiceSettings
        from sealserve.crypto import Identity, RequestKey, SymmetricKey
        from sealserve.keyservice._launch import launch_keyservice

        self.config = config
        self.platform = SimulatedPlatform(data_dir=root / "platform").open()
        pub = root / "platform.pub"
        pub.write_text(self.platform.public_key_bytes.hex() + "\n")
        settings = KeyServiceSettings(
            port=0,
            db_url=f"sqlite+pysqlite:///{root / 'keyservice.db'}",
            rate_limit_per_s=1e6,
            rate_limit_burst=1_000_000,
            max_outstanding_challenges=max(64, 4 * config.concurrency),
        )
        self.service = launch_keyservice(
            self.platform, settings, data_dir=root / "data", platform_key=pub, log_level="WARNING"
        )
        self.url = self.service.url
        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({self.service.measurement})),
            trust=self.platform.trust_anchors(),
        )
        self.pin = pin
        runtime_policy = Policy(measurements=frozenset({self.platform.measurement("attest-probe")}))
        owner = Owner(Identity.generate(), keyservice_url=self.url, pin=pin)
        user = User(Identity.generate(), keyservice_url=self.url, pin=pin)
        with owner, user:
            owner.register()
            user.register()
            self.model_id = owner.model_id("bench-model")
            owner.put_model_key("bench-model", SymmetricKey.generate())
            owner.grant("bench-model", user.principal_id, runtime_policy)
            user.put_request_key(self.model_id, RequestKey.generate(), runtime_policy)
        self.user_id = user.principal_id

    def close(self) -> None:
        try:
            self.service.stop()
        finally:
            self.platform.close()

    # -- the client side --------------------------------------------------------------------

    def run_phase(self, kind: str, count: int) -> _Phase:
        return asyncio.run(self._phase(kind, count))

    async def _phase(self, kind: str, count: int) -> _Phase:
        import aiohttp

        from sealserve.keyservice import (
            ReleaseSession,
            attestation_nonce,
            parse_challenge,
            verify_keyservice,
        )

        connector = aiohttp.TCPConnector(limit=self.config.concurrency)
        async with aiohttp.ClientSession(self.url, connector=connector) as http:
            nonce = attestation_nonce()
            async with http.get(f"/v1/attestation?nonce={_b64(nonce)}") as r:
                attestation = await r.read()
            attested = verify_keyservice(
                attestation,
                nonce=nonce,
                policy=self.pin.policy,
                trust=self.pin.trust,
                now=time.time(),
            )
            sessions = [ReleaseSession(keyservice=attested) for _ in range(self.config.concurrency)]
            pairs = [(self.user_id, self.model_id)]
            latencies: list[float] = []
            remaining = count
            checked = [0]

            async def release(session: ReleaseSession) -> None:
                t0 = time.perf_counter()
                async with http.post("/v1/challenges") as r:
                    challenge = parse_challenge(await r.read())
                evidence = self.platform.issue_unlaunched_evidence(
                    "attest-probe", session.report_data(challenge)
                )
                body = session.request_body(nonce=challenge, evidence=evidence, pairs=pairs)
                async with http.post(
                    "/v1/releases", data=body, headers={"content-type": "application/json"}
                ) as r:
                    status, content = r.status, await r.read()
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"release answered {status}")
                checked[0] += 1
                if checked[0] % _OPEN_EVERY == 1:
                    # outside the timed span, on a sample (the client shares the machine with
                    # the server): the release must open (signature, nonce, unwrap)
                    session.open(content, nonce=challenge)

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

            started = time.perf_counter()
            await asyncio.gather(*(worker(s) for s in sessions))
            wall = time.perf_counter() - started
        return _Phase(latencies, wall)


def _b64(data: bytes) -> str:
    from sealserve.keyservice import wire

    return wire.b64encode(data)


def run_keyservice_bench(config: KeyServiceBenchConfig, *, progress: Any = None) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="sealserve-bench-ks-") as tmp:
        bench = _Bench(Path(tmp), config)
        try:
            if config.warmup:
                bench.run_phase("release", config.warmup)
                bench.run_phase("trivial", config.warmup)
            results = interleaved(
                {
                    "release": lambda: bench.run_phase("release", config.requests_per_round),
                    "trivial": lambda: bench.run_phase("trivial", config.requests_per_round),
                },
                repeats=config.rounds,
                progress=progress,
            )
        finally:
            bench.close()
    release = [x for phase in results["release"] for x in phase.latencies_s]
    trivial = [x for phase in results["trivial"] for x in phase.latencies_s]
    release_wall = sum(p.wall_s for p in results["release"])
    trivial_wall = sum(p.wall_s for p in results["trivial"])
    per_round = [len(p.latencies_s) / p.wall_s for p in results["release"]]
    p50 = percentile(release, 50) * 1e3
    trivial_p50 = percentile(trivial, 50) * 1e3
    releases_per_s = len(release) / release_wall if release_wall else math.nan
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
        "goals": {
            "releases_per_s": RELEASES_GOAL,
            "p50_ratio": P50_RATIO_GOAL,
            "met": releases_per_s >= RELEASES_GOAL and ratio(p50, trivial_p50) <= P50_RATIO_GOAL,
        },
        "config": dataclasses.asdict(config),
        "method": (
            "challenge + platform evidence + release per round trip, concurrent clients on "
            "loopback, against GET /healthz on the same server; phases interleaved"
        ),
        "environment": environment(),
    }


def _keyservice(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures to this JSON file.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Concurrent clients.")] = 8,
    requests: Annotated[int, typer.Option(help="Round trips per phase and round.")] = 400,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds.")] = 3,
) -> None:
    """Key release round trips (challenge + release) vs a trivial endpoint, same server."""
    console = Console(stderr=True)
    try:
        config = KeyServiceBenchConfig(
            concurrency=concurrency, requests_per_round=requests, rounds=rounds
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with console.status("starting the KeyService through the simulated platform") as status:
        result = run_keyservice_bench(config, progress=lambda text: status.update(text))
    print_table(
        "sealserve bench keyservice",
        ["case", "per s", "p50 ms", "p99 ms", "ratio to trivial (p50)"],
        [
            ["release (challenge + release)", result["releases_per_s"], result["p50_ms"],
             result["p99_ms"], result["p50_ratio"]],
            ["trivial (GET /healthz)", result["trivial_requests_per_s"],
             result["trivial_p50_ms"], result["trivial_p99_ms"], 1.0],
        ],
    )  # fmt: skip
    goals = result["goals"]
    typer.echo(
        f"goals: >= {RELEASES_GOAL:.0f} releases/s and p50 <= {P50_RATIO_GOAL:.0f}x trivial: "
        f"{'met' if goals['met'] else 'NOT met'}"
    )
    if json_path is not None:
        write_json(json_path, result)
        typer.echo(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``keyservice`` to the ``sealserve bench`` group."""
    app.command("keyservice")(_keyservice)
