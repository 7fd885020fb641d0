"""The simulator: exact latencies and GB-seconds on tiny traces, determinism, stalls."""

from __future__ import annotations

import numpy as np
import pytest

from sealserve.errors import PackerError
from sealserve.packer import (
    POLICY_NAMES,
    CostModel,
    Decision,
    DedicatedPolicy,
    FittedDedicatedPolicy,
    FunctionGroup,
    GroupConfig,
    Policy,
    RouteRequest,
    SealservePolicy,
    SesemiPolicy,
    Trace,
    TraceRequest,
    make_policy,
    simulate,
    synthetic_trace,
)


def trace(*rows: tuple[float, str] | tuple[float, str, float]) -> Trace:
    return Trace(tuple(TraceRequest(*row) for row in rows), name="t")


def test_one_request_pays_cold_start_load_and_inference(
    costs: CostModel, config: GroupConfig
) -> None:
    result = simulate(
        trace((0.0, "small")), FittedDedicatedPolicy(), costs, config=config, jitter=0
    )
    assert result.latencies_s.tolist() == pytest.approx([1.0 + 0.1 + 0.01])
    assert (result.cold_starts, result.model_loads, result.after_cold_start) == (1, 0, 1)
    # alive from 0 until its keep-alive ran out after the request finished, billed for the
    # memory its function is sized for: 100 MB of runtime + 100 MB of model, in 128 MB steps
    assert result.end_s == pytest.approx(1.11 + 180.0)
    assert result.gb_s == pytest.approx(256 / 1024 * (1.11 + 180.0))
    assert result.instance_seconds == pytest.approx(181.11)
    assert result.function_s == pytest.approx({"group/small": 181.11})
    # dedicated: the same, billed for the group's instance (1,000 MB budget + 100 MB runtime)
    same = simulate(trace((0.0, "small")), DedicatedPolicy(), costs, config=config, jitter=0)
    assert same.latencies_s.tolist() == result.latencies_s.tolist()
    assert same.gb_s == pytest.approx(1152 / 1024 * (1.11 + 180.0))


def test_a_warm_request_pays_only_its_inference(costs: CostModel, config: GroupConfig) -> None:
    result = simulate(
        trace((0.0, "small"), (10.0, "small")),
        FittedDedicatedPolicy(),
        costs,
        config=config,
        jitter=0,
    )
    assert result.latencies_s.tolist() == pytest.approx([1.11, 0.01])
    assert result.gb_s == pytest.approx(256 / 1024 * (10.01 + 180.0))


def test_a_trace_duration_is_the_inference_time(costs: CostModel, config: GroupConfig) -> None:
    result = simulate(
        trace((0.0, "small"), (10.0, "small", 0.5)),
        DedicatedPolicy(),
        costs,
        config=config,
        jitter=0,
    )
    assert result.latencies_s[1] == pytest.approx(0.5)


def test_a_request_during_a_cold_start_waits_for_it(costs: CostModel, config: GroupConfig) -> None:
    result = simulate(
        trace((0.0, "small"), (0.5, "small")), DedicatedPolicy(), costs, config=config, jitter=0
    )
    assert result.latencies_s.tolist() == pytest.approx([1.11, 0.61])
    assert result.after_cold_start == 2
    assert result.cold_starts == 1


def test_keep_alive_expiry_means_a_second_cold_start(costs: CostModel, config: GroupConfig) -> None:
    result = simulate(
        trace((0.0, "small"), (500.0, "small")),
        FittedDedicatedPolicy(),
        costs,
        config=config,
        jitter=0,
    )
    assert result.cold_starts == 2
    assert result.gb_s == pytest.approx(256 / 1024 * 2 * 181.11)


def test_packing_shares_an_instance_where_dedicated_starts_two(costs: CostModel) -> None:
    rows = trace((0.0, "small"), (5.0, "medium"))
    # packed instances of 512 MB: 100 MB of runtime and room for both models
    config = GroupConfig(budget_mb=400.0, runtime_base_mb=100.0)
    fitted = simulate(rows, FittedDedicatedPolicy(), costs, config=config, jitter=0)
    dedicated = simulate(rows, DedicatedPolicy(), costs, config=config, jitter=0)
    packed = simulate(rows, SealservePolicy(priors=costs), costs, config=config, jitter=0)
    assert (dedicated.cold_starts, dedicated.model_loads) == (2, 0)
    assert (packed.cold_starts, packed.model_loads) == (1, 1)
    assert packed.latencies_s[1] == pytest.approx(0.4 + 0.05)
    # fitted: a 256 MB function for small and a 512 MB one for medium; dedicated: 512 MB each
    assert fitted.gb_s == pytest.approx((256 * 181.11 + 512 * 181.45) / 1024)
    assert dedicated.gb_s == pytest.approx(512 * (181.11 + 181.45) / 1024)
    assert packed.gb_s == pytest.approx(512 * 185.45 / 1024)
    assert packed.gb_s < fitted.gb_s < dedicated.gb_s


def test_the_same_seed_gives_the_same_result(costs: CostModel, config: GroupConfig) -> None:
    rows = synthetic_trace(2)
    rows = Trace(tuple(r for r in rows.requests if r.arrival_s < 300), name="short")
    one = simulate(rows, SesemiPolicy(), costs, config=config, seed=5)
    two = simulate(rows, SesemiPolicy(), costs, config=config, seed=5)
    other = simulate(rows, SesemiPolicy(), costs, config=config, seed=6)
    assert np.array_equal(one.latencies_s, two.latencies_s)
    assert one.summary() == two.summary()
    assert not np.array_equal(one.latencies_s, other.latencies_s)


def test_every_request_completes_once(costs: CostModel, config: GroupConfig) -> None:
    rows = Trace(tuple(r for r in synthetic_trace(3).requests if r.arrival_s < 200), name="x")
    for name in POLICY_NAMES:
        result = simulate(rows, make_policy(name, priors=costs), costs, config=config, seed=1)
        assert result.requests == len(rows)
        assert np.isfinite(result.latencies_s).all()
        assert (result.latencies_s > 0).all()
        routed = result.decisions["run"] + result.decisions["start"]
        assert routed == len(rows)
        assert result.decisions["start"] == result.cold_starts
        summary = result.summary()
        assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]


class AlwaysWait(Policy):
    name = "always-wait"

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        return Decision.wait(request.model, reason="never")


def test_a_policy_that_waits_on_nothing_is_reported(costs: CostModel, config: GroupConfig) -> None:
    with pytest.raises(PackerError, match="left 1 requests waiting"):
        simulate(trace((0.0, "small")), AlwaysWait(), costs, config=config)


def test_jitter_must_be_a_coefficient(costs: CostModel, config: GroupConfig) -> None:
    with pytest.raises(ValueError, match="jitter must be within"):
        simulate(trace((0.0, "small")), DedicatedPolicy(), costs, config=config, jitter=2.0)
