"""Packer invariants over random traces, platforms and policies (hypothesis).

Whatever the trace and the platform: every request is routed exactly once and completes
exactly once; no instance ever runs more requests than its concurrency or holds more model
memory (or more models) than it may, and every instance of the group's own function has one
of its shapes (several sizes, for ``sealserve``); under ``sesemi`` a claimed instance serves
only the model that claims it, no other model takes it before the claim expires, and a model
with nothing in flight goes to the first free instance in pool order that no live claim of
another model holds, whatever the instances hold (SeSeMI's ``steal_func``); GB-seconds are the
sum of every instance's alive interval x its own memory; and a request never finishes faster
than its own inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealserve.packer import (
    POLICY_NAMES,
    CostModel,
    Decision,
    DecisionKind,
    FunctionGroup,
    GroupConfig,
    Instance,
    ModelCosts,
    Policy,
    RouteRequest,
    SesemiPolicy,
    SyntheticConfig,
    Trace,
    TraceRequest,
    make_policy,
    parse_trace_csv,
    simulate,
    synthetic_trace,
    write_trace_csv,
)

COSTS = CostModel(
    cold_start_s=1.0,
    runtime_base_mb=100.0,
    models={
        "small": ModelCosts(load_s=0.1, infer_s=0.01, memory_mb=100.0),
        "medium": ModelCosts(load_s=0.4, infer_s=0.05, memory_mb=300.0),
        "large": ModelCosts(load_s=2.0, infer_s=0.2, memory_mb=700.0),
    },
)
MODELS = ["small", "medium", "large", "m-0", "m-1", "m-2", "m-3", "m-4"]


class Checked(Policy):
    """Wraps a policy; checks the group's invariants at every step it is told about."""

    name = "checked"

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.resident_limit = inner.resident_limit
        self.routed: list[int] = []
        self.group: FunctionGroup | None = None
        self.claims_before: dict[int, str] = {}

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        self.group = group
        decision = self.inner.route(request, group, now)
        if isinstance(self.inner, SesemiPolicy):
            self.claims_before = self.inner.claims()
            if group.in_flight_of(request.model) == 0:
                first = self.first_free(self.inner, request.model, group, now)
                if first is not None:
                    assert decision.instance_id == first
                else:
                    assert decision.kind is not DecisionKind.RUN
        return decision

    @staticmethod
    def first_free(
        policy: SesemiPolicy, model: str, group: FunctionGroup, now: float
    ) -> int | None:
        claims = policy.claims()
        for inst in group:
            owner = claims.get(inst.id)
            held = owner is not None and owner != model and now < policy.claim_expires_at(owner)
            if inst.in_flight == 0 and not held:
                return inst.id
        return None

    def check(self) -> None:
        group = self.group
        if group is None:
            return
        cap = group.config.max_models
        shapes = {(s.memory_mb, s.budget_mb) for s in group.config.shapes}
        for inst in group:
            assert 0 <= inst.in_flight <= inst.concurrency
            assert inst.used_mb <= inst.budget_mb + 1e-6
            if inst.function == group.config.name:  # the group's own: one of its shapes
                assert (inst.memory_mb, inst.budget_mb) in shapes
            if cap is not None:
                assert len(inst.models) <= cap
        if isinstance(self.inner, SesemiPolicy):
            alive = {i.id: i for i in group}
            for iid, model in self.inner.claims().items():
                inst = alive.get(iid)
                if inst is not None:
                    assert {inst.request_model(r) for r in inst.request_ids()} <= {model}

    def on_arrival(self, request: RouteRequest, now: float) -> None:
        self.inner.on_arrival(request, now)

    def on_routed(
        self, request: RouteRequest, decision: Decision, group: FunctionGroup, now: float
    ) -> None:
        if decision.kind is not DecisionKind.WAIT:
            self.routed.append(request.request_id)
        if isinstance(self.inner, SesemiPolicy) and decision.instance_id is not None:
            owner = self.claims_before.get(decision.instance_id)
            if owner is not None and owner != request.model:
                # another model may take a claimed instance only once the claim expired
                assert now >= self.inner.claim_expires_at(owner) - 1e-9
        self.inner.on_routed(request, decision, group, now)
        self.check()

    def on_ready(self, instance: Instance, cold_start_s: float, now: float) -> None:
        self.inner.on_ready(instance, cold_start_s, now)
        self.check()

    def on_loaded(self, instance: Instance, model: str, load_s: float, now: float) -> None:
        self.inner.on_loaded(instance, model, load_s, now)
        self.check()

    def on_complete(
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        self.inner.on_complete(request, instance, exec_s, now)
        self.check()

    def on_stopped(self, instance: Instance, now: float) -> None:
        self.inner.on_stopped(instance, now)
        self.check()


requests = st.lists(
    st.builds(
        TraceRequest,
        st.floats(min_value=0.0, max_value=120.0, allow_nan=False),
        st.sampled_from(MODELS),
        st.one_of(st.none(), st.floats(min_value=0.001, max_value=0.5)),
    ),
    min_size=1,
    max_size=40,
)

platforms = st.builds(
    GroupConfig,
    budget_mb=st.sampled_from([800.0, 1000.0, 1600.0]),
    runtime_base_mb=st.just(100.0),
    concurrency=st.integers(1, 4),
    keep_alive_s=st.sampled_from([0.5, 5.0, 30.0, 180.0]),
    max_instances=st.integers(1, 4),
    max_models=st.one_of(st.none(), st.integers(1, 3)),
    sizes_mb=st.sampled_from([(), (512,), (512, 1024), (768, 3072)]),
)


@settings(max_examples=150, deadline=None)
@given(
    rows=requests,
    config=platforms,
    name=st.sampled_from(POLICY_NAMES),
    jitter=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_invariants_hold_for_every_policy(
    rows: list[TraceRequest], config: GroupConfig, name: str, jitter: float, seed: int
) -> None:
    trace = Trace(tuple(rows))
    checked = Checked(make_policy(name, priors=COSTS, max_models=2))
    result = simulate(trace, checked, COSTS, config=config, jitter=jitter, seed=seed)
    # conservation: every request routed exactly once and completed exactly once
    assert sorted(checked.routed) == list(range(len(trace)))
    assert result.requests == len(trace)
    assert np.isfinite(result.latencies_s).all()
    group = checked.group
    assert group is not None
    assert group.completed == len(trace)
    assert group.waiting_count() == 0
    assert group.instances == ()
    # metering: GB-seconds are the alive intervals x memory
    intervals = group.intervals()
    assert all(stop is not None for _mb, _start, stop in intervals)
    billed = sum(mb / 1024 * (stop - start) for mb, start, stop in intervals if stop is not None)
    assert result.gb_s == pytest.approx(billed)
    sizes = {s.memory_mb for s in config.shapes}
    for inst in group.stopped:  # each billed by its own shape
        if inst.function == config.name:
            assert inst.memory_mb in sizes
        assert inst.stopped_at is not None
        alive = inst.stopped_at - inst.started_at
        assert inst.gb_seconds(0.0) == pytest.approx(inst.memory_mb / 1024 * alive)
    if jitter == 0.0:
        for req, latency in zip(trace.requests, result.latencies_s, strict=True):
            own = req.duration_s if req.duration_s is not None else COSTS.infer_s(req.model)
            assert latency >= own - 1e-9


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), models=st.integers(1, 8))
def test_synthetic_traces_are_deterministic(seed: int, models: int) -> None:
    cfg = SyntheticConfig(models=models, duration_s=120.0)
    one: Any = synthetic_trace(seed, cfg)
    assert one == synthetic_trace(seed, cfg)
    assert all(0.0 <= r.arrival_s <= 120.0 for r in one.requests)
    assert {r.model for r in one.requests} <= {f"model-{i:02d}" for i in range(1, models + 1)}


@settings(max_examples=60, deadline=None)
@given(rows=requests)
def test_csv_round_trips(rows: list[TraceRequest]) -> None:
    trace = Trace(tuple(rows), name="r")
    again = parse_trace_csv(write_trace_csv(trace).splitlines(keepends=True))
    assert [(r.arrival_s, r.model) for r in again.requests] == [
        (r.arrival_s, r.model) for r in trace.requests
    ]
    for a, b in zip(again.requests, trace.requests, strict=True):
        assert (a.duration_s is None) == (b.duration_s is None)
        if a.duration_s is not None and b.duration_s is not None:
            assert a.duration_s == pytest.approx(b.duration_s)
