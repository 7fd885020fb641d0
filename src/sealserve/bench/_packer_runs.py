"""Running FnPacker's policies on a trace, interleaved and repeated, and the issue's goals."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from sealserve.bench._common import interleaved, ratio
from sealserve.packer import (
    CostModel,
    GroupConfig,
    SimResult,
    SpareConfig,
    Trace,
    make_policy,
    simulate,
)

__all__ = ["PolicyRuns", "evaluate_goals", "run_policies"]

_BASELINE = "dedicated"

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
    spares: SpareConfig | None = None,
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
            return simulate(
                trace, policy, costs, config=config, jitter=jitter, seed=seed + count,
                spares=spares,
            )  # fmt: skip

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
