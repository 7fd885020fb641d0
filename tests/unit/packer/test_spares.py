"""Spare instances: started ahead of demand once instances are being started, invisible to
policies, taken by the next start of their size, billed from their start, stopped when idle."""

from __future__ import annotations

import pytest

from sealserve.packer import (
    CostModel,
    DecisionKind,
    FunctionGroup,
    GroupConfig,
    ModelCosts,
    Router,
    RouteRequest,
    SpareConfig,
    SparePolicy,
    make_policy,
    simulate,
    synthetic_trace,
)
from sealserve.packer._decision import Decision, InstanceShape
from sealserve.packer._policy import Policy

MB = {"a": 300.0, "b": 300.0, "c": 300.0}


class AlwaysStart(Policy):
    """Starts an instance for every request (and records what it was shown)."""

    name = "always-start"

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.ready: list[int] = []

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        self.seen.append(len(group.instances))
        return Decision.start(request.model, reason="start")

    def on_ready(self, instance: object, cold_start_s: float, now: float) -> None:
        self.ready.append(getattr(instance, "id", -1))


def spare_router(**spares: object) -> tuple[Router, AlwaysStart]:
    policy = AlwaysStart()
    cfg = GroupConfig(budget_mb=1000.0, runtime_base_mb=100.0, keep_alive_s=60.0)
    return Router(policy, cfg, model_memory_mb=MB.__getitem__, spares=SpareConfig(**spares)), policy  # type: ignore[arg-type]


def test_a_spare_is_started_once_starts_recur_and_the_next_start_takes_it() -> None:
    router, policy = spare_router(max_spares=1, min_starts=2)
    first = router.route(RouteRequest(1, "a", 0.0), 0.0)
    assert first.decision.kind is DecisionKind.START
    assert router.spares_to_start(0.0) == ()  # one start: no demand yet
    router.route(RouteRequest(2, "b", 1.0), 1.0)
    (spare,) = router.spares_to_start(1.0)  # two within the window: keep one ready
    assert router.spares_to_start(1.0) == ()  # and only one
    assert spare.id not in {i.id for i in router.group}  # the policy never sees it
    router.instance_ready(spare.id, 2.0)
    assert policy.ready == []  # nor its readiness
    taken = router.route(RouteRequest(3, "c", 5.0), 5.0)
    assert taken.decision.kind is DecisionKind.RUN  # no cold start: a load on the spare
    assert taken.decision.instance_id == spare.id
    assert taken.decision.load
    assert taken.loads == ("c",)
    assert "spare" in taken.decision.reason
    assert policy.ready == [spare.id]  # now the policy learns of a ready instance
    group = router.group
    assert group.spare_adoptions == 1
    assert group.spare_gb_seconds(100.0) == pytest.approx(spare.memory_mb / 1024 * 4.0)  # 1-5 s
    assert group.gb_seconds(100.0) >= group.spare_gb_seconds(100.0)


def test_a_spare_nobody_takes_stops_after_the_keep_alive_and_none_is_wanted_then() -> None:
    router, _ = spare_router(max_spares=1, min_starts=2)
    router.route(RouteRequest(1, "a", 0.0), 0.0)
    router.route(RouteRequest(2, "b", 0.0), 0.0)
    (spare,) = router.spares_to_start(0.0)
    router.instance_ready(spare.id, 1.0)
    assert router.expire(60.0) == ()
    assert spare.id in router.expire(61.0)
    assert router.group.spares == ()
    assert router.spares_to_start(200.0) == ()  # the starts are out of the window
    assert router.group.spare_gb_seconds(300.0) == pytest.approx(spare.memory_mb / 1024 * 61.0)


def test_spares_never_take_the_last_instance_slot() -> None:
    policy = AlwaysStart()
    cfg = GroupConfig(budget_mb=1000.0, runtime_base_mb=100.0, max_instances=3)
    router = Router(policy, cfg, model_memory_mb=MB.__getitem__,
                    spares=SpareConfig(max_spares=2, min_starts=1))  # fmt: skip
    router.route(RouteRequest(1, "a", 0.0), 0.0)
    assert len(router.spares_to_start(0.0)) == 1  # 1 alive + 1 spare + 1 free = 3
    router.route(RouteRequest(2, "b", 0.0), 0.0)  # takes the spare
    assert len(router.group.instances) == 2
    assert router.spares_to_start(0.0) == ()  # 2 alive: no room for a spare and a start


def test_the_spare_policy_and_its_config() -> None:
    shape = InstanceShape(function="f", memory_mb=2048, budget_mb=1664.0)
    policy = SparePolicy(SpareConfig(max_spares=2, min_starts=3, window_s=10.0), keep_alive_s=60)
    for t in (0.0, 1.0):
        policy.note_start(shape, t)
    assert policy.wanted(2.0) == (shape, 0)
    policy.note_start(shape, 5.0)
    assert policy.wanted(5.0) == (shape, 2)
    assert policy.wanted(10.5) == (shape, 0)  # the first start left the window
    for bad, name in (({"max_spares": -1}, "max_spares"), ({"min_starts": 0}, "min_starts"),
                      ({"window_s": 0.0}, "window_s")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            SpareConfig(**bad)  # type: ignore[arg-type]


def test_the_simulator_bills_spares_and_reports_them() -> None:
    trace = synthetic_trace(3, None)
    costs = CostModel(
        cold_start_s=2.0,
        runtime_base_mb=80.0,
        models={"m": ModelCosts(load_s=0.2, infer_s=0.02, memory_mb=100.0)},
    )
    config = GroupConfig.for_instance(memory_mb=2048, runtime_base_mb=384.0)
    runs = [
        simulate(trace, make_policy("dedicated"), costs, config=config, seed=0, spares=spares)
        for spares in (None, SpareConfig(max_spares=1))
    ]
    without, with_spares = runs
    assert without.spare_starts == 0
    assert without.spare_gb_s == 0
    assert with_spares.spare_starts > 0
    assert 0 < with_spares.spares_taken <= with_spares.spare_starts
    assert 0 < with_spares.spare_gb_s < with_spares.gb_s
    assert with_spares.summary()["spare_gb_s"] == pytest.approx(with_spares.spare_gb_s, abs=1e-3)
    # the same seed gives the same run
    again = simulate(trace, make_policy("dedicated"), costs, config=config, seed=0,
                     spares=SpareConfig(max_spares=1))  # fmt: skip
    assert again.summary() == with_spares.summary()
