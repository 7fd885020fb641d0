"""Each policy's decisions on hand-made scenarios, with time given explicitly."""

from __future__ import annotations

import pytest

from sealserve.errors import PackerError
from sealserve.packer import (
    POLICY_NAMES,
    CostModel,
    DecisionKind,
    DedicatedPolicy,
    FittedDedicatedPolicy,
    FunctionGroup,
    GroupConfig,
    Instance,
    LruMultiplexPolicy,
    ModelCosts,
    OneModelSesemiPolicy,
    Policy,
    Routed,
    Router,
    RouteRequest,
    SealservePolicy,
    SesemiPolicy,
    make_policy,
)


class Driver:
    """Drives a router as the simulator would, with explicit times."""

    def __init__(self, policy: Policy, costs: CostModel, **config: object) -> None:
        base: dict[str, object] = {
            "budget_mb": 1000.0,
            "runtime_base_mb": 100.0,
            "concurrency": 2,
            "max_instances": 3,
        }
        base.update(config)
        cfg = GroupConfig(**base)  # type: ignore[arg-type]
        self.router = Router(policy, cfg, model_memory_mb=costs.memory_mb)
        self.costs = costs
        self.group = self.router.group
        self.next_id = 0

    def send(self, model: str, now: float) -> Routed:
        self.next_id += 1
        return self.router.route(RouteRequest(self.next_id, model, now), now)

    def warm(self, model: str, now: float) -> int:
        """Route one request of ``model`` and complete it; returns its instance."""
        routed = self.send(model, now)
        iid = routed.decision.instance_id
        assert iid is not None
        inst = self.group.instance(iid)
        if not inst.is_ready:
            self.router.instance_ready(iid, now)
        if inst.is_loading(model):
            self.router.model_loaded(iid, model, now)
        self.router.request_done(self.next_id, now, exec_s=self.costs.infer_s(model))
        return iid


# -- dedicated ----------------------------------------------------------------------------------


def test_dedicated_gives_each_model_its_own_function(costs: CostModel) -> None:
    d = Driver(DedicatedPolicy(), costs)
    first = d.send("small", 0.0)
    assert first.decision.kind is DecisionKind.START
    assert first.decision.shape is not None
    assert first.decision.shape.function == "group/small"
    second = d.send("small", 0.1)  # the starting instance has a free slot
    assert second.decision.kind is DecisionKind.RUN
    assert second.decision.instance_id == first.decision.instance_id
    other = d.send("medium", 0.2)  # never shares with another model
    assert other.decision.kind is DecisionKind.START
    third = d.send("small", 0.3)  # both slots taken: the function scales out
    assert third.decision.kind is DecisionKind.START
    assert d.group.count("group/small") == 2


def test_dedicated_waits_at_its_function_maximum(costs: CostModel) -> None:
    d = Driver(DedicatedPolicy(), costs, max_instances=1, concurrency=1)
    d.send("small", 0.0)
    assert d.send("small", 0.1).decision.kind is DecisionKind.WAIT
    assert d.send("medium", 0.2).decision.kind is DecisionKind.START


def test_dedicated_fitted_sizes_each_function_for_its_model(costs: CostModel) -> None:
    d = Driver(FittedDedicatedPolicy(), costs)  # runtime 100 MB, steps of 128 MB
    shapes = {m: d.send(m, 0.0).decision.shape for m in ("small", "medium", "large")}
    assert {m: (s.function, s.memory_mb, s.budget_mb) for m, s in shapes.items() if s} == {
        "small": ("group/small", 256, 100.0),
        "medium": ("group/medium", 512, 300.0),
        "large": ("group/large", 896, 700.0),
    }


def test_dedicated_gives_every_function_the_group_instance(costs: CostModel) -> None:
    d = Driver(DedicatedPolicy(), costs)
    small = d.send("small", 0.0).decision.shape
    large = d.send("large", 0.0).decision.shape
    assert small is not None
    assert large is not None
    assert (small.function, large.function) == ("group/small", "group/large")
    assert small.memory_mb == large.memory_mb == d.group.config.shape.memory_mb == 1152
    assert small.budget_mb == large.budget_mb == 1000.0


# -- sesemi -------------------------------------------------------------------------------------


def test_sesemi_claims_an_instance_for_a_model_with_two_requests_in_flight(
    costs: CostModel,
) -> None:
    policy = SesemiPolicy()
    assert policy.resident_limit is None  # our runtime: models resident within the budget
    d = Driver(policy, costs)
    i0 = d.warm("small", 0.0)
    i1 = d.warm("medium", 0.0)  # i0 is free: medium takes it (first free instance)
    assert i1 == i0
    assert d.group.instance(i0).models == ("small", "medium")  # loaded beside small
    a = d.send("small", 1.0)
    assert a.decision.instance_id == i0
    assert not a.decision.load  # still resident: no switch
    b = d.send("small", 1.01)
    assert b.decision.instance_id == i0
    assert "claims" in b.decision.reason
    assert policy.claims() == {i0: "small"}


def test_sesemi_takes_the_first_free_instance_whatever_it_holds(costs: CostModel) -> None:
    d = Driver(SesemiPolicy(), costs, concurrency=1)
    d.send("small", 0.0)
    d.send("large", 0.0)  # i0 is busy: large starts i1
    d.router.instance_ready(0, 1.0)
    d.router.instance_ready(1, 1.0)
    d.router.model_loaded(0, "small", 1.1)
    d.router.model_loaded(1, "large", 3.0)
    d.router.request_done(1, 1.2, exec_s=0.01)
    d.router.request_done(2, 3.2, exec_s=0.2)
    # Both are free and unclaimed; i1 holds large, but SeSeMI takes i0, the first in the pool.
    routed = d.send("large", 10.0)
    assert routed.decision.instance_id == 0
    assert routed.decision.load
    assert routed.decision.evict == ()  # our runtime keeps small beside it
    assert "first free instance, unclaimed" in routed.decision.reason


def test_sesemi_1model_holds_one_model_per_instance(costs: CostModel) -> None:
    policy = OneModelSesemiPolicy()
    assert (policy.name, policy.resident_limit) == ("sesemi-1model", 1)
    d = Driver(policy, costs)
    i0 = d.warm("small", 0.0)
    assert d.group.config.max_models == 1
    switched = d.send("medium", 1.0)  # the first free instance is i0: switching it is a load
    assert (switched.decision.instance_id, switched.decision.load) == (i0, True)
    assert switched.decision.evict == ("small",)
    d.router.model_loaded(i0, "medium", 1.4)
    d.router.request_done(2, 1.45, exec_s=0.05)
    back = d.send("small", 2.0)
    assert (back.decision.instance_id, back.decision.evict) == (i0, ("medium",))


def test_sesemi_keeps_an_idle_claim_for_twice_the_last_execution_time(costs: CostModel) -> None:
    policy = SesemiPolicy()
    d = Driver(policy, costs)
    iid = d.warm("small", 0.0)
    d.send("small", 1.0)
    d.send("small", 1.0)  # claimed now
    d.router.request_done(2, 1.1, exec_s=0.1)
    # Request 3 began (1.0) before the last recorded end (1.1): as in SeSeMI's statistics,
    # its end is not recorded, only its execution time.
    d.router.request_done(3, 1.2, exec_s=0.12)
    assert policy.claim_expires_at("small") == pytest.approx(1.1 + 2 * 0.12)
    early = d.send("medium", 1.3)  # the claim holds: medium needs another instance
    assert early.decision.kind is DecisionKind.START
    assert early.decision.instance_id != iid
    late = d.send("large", 1.35)  # expired: large takes the first free instance, iid
    assert late.decision.instance_id == iid
    assert "expired" in late.decision.reason
    assert iid not in policy.claims()


def test_sesemi_records_the_end_of_a_call_that_began_after_the_last_one(
    costs: CostModel,
) -> None:
    policy = SesemiPolicy()
    d = Driver(policy, costs)
    d.warm("small", 0.0)
    d.send("small", 1.0)
    d.router.request_done(2, 1.5, exec_s=0.05)
    assert policy.claim_expires_at("small") == pytest.approx(1.5 + 0.1)


def test_sesemi_scales_a_full_claimed_endpoint_out_and_claims_the_new_instance(
    costs: CostModel,
) -> None:
    policy = SesemiPolicy()
    d = Driver(policy, costs, concurrency=2)
    d.send("small", 0.0)
    d.send("small", 0.0)
    third = d.send("small", 0.0)
    assert third.decision.kind is DecisionKind.START
    assert sorted(policy.claims().values()) == ["small", "small"]


def test_sesemi_waits_for_the_next_claim_expiry_at_the_maximum(costs: CostModel) -> None:
    policy = SesemiPolicy()
    d = Driver(policy, costs, max_instances=1)
    d.warm("small", 0.0)
    d.send("small", 1.0)
    d.send("small", 1.0)
    d.router.request_done(2, 1.1, exec_s=0.1)
    d.router.request_done(3, 1.1, exec_s=0.1)
    waited = d.send("medium", 1.2)
    assert waited.decision.kind is DecisionKind.WAIT
    assert waited.decision.retry_at == pytest.approx(1.3)


def test_sesemi_checks_its_options() -> None:
    with pytest.raises(ValueError, match="resident_limit must be an int >= 1 or None, got 0"):
        SesemiPolicy(resident_limit=0)
    with pytest.raises(ValueError, match="claim_factor must be a finite number >= 0"):
        SesemiPolicy(claim_factor=-1.0)
    assert SesemiPolicy(resident_limit=3).options() == {"resident_limit": 3, "claim_factor": 2.0}


# -- lru-multiplex ------------------------------------------------------------------------------


def test_lru_multiplex_prefers_an_instance_holding_the_model(costs: CostModel) -> None:
    d = Driver(LruMultiplexPolicy(max_models=2), costs)
    i0 = d.warm("small", 0.0)
    d.send("medium", 1.0)
    d.send("medium", 1.0)  # i0 is full now
    i1 = d.send("large", 1.0).decision.instance_id  # a new instance
    assert i1 != i0
    d.router.model_loaded(i0, "medium", 1.5)
    d.router.request_done(2, 2.0, exec_s=0.1)
    again = d.send("small", 3.0)
    assert again.decision.instance_id == i0
    assert not again.decision.load
    assert "holds the model" in again.decision.reason


def test_lru_multiplex_loads_on_the_instance_with_fewest_models_and_evicts_lru(
    costs: CostModel,
) -> None:
    d = Driver(LruMultiplexPolicy(max_models=2), costs, concurrency=4)
    i0 = d.warm("small", 0.0)
    d.warm("medium", 1.0)
    third = d.send("large", 2.0)
    assert third.decision.instance_id == i0
    assert third.decision.evict == ("small",)  # least recently used, beyond two models


def test_lru_multiplex_refuses_a_model_that_fits_no_instance(costs: CostModel) -> None:
    d = Driver(LruMultiplexPolicy(), costs, budget_mb=500.0)
    with pytest.raises(PackerError, match="more than the instance budget"):
        d.send("large", 0.0)


# -- sealserve ----------------------------------------------------------------------------------


def test_sealserve_runs_where_the_model_is_resident(costs: CostModel) -> None:
    d = Driver(SealservePolicy(priors=costs), costs)
    i0 = d.warm("small", 0.0)
    d.warm("medium", 0.5)
    routed = d.send("small", 1.0)
    assert routed.decision.instance_id == i0
    assert not routed.decision.load
    assert routed.decision.expected_s == pytest.approx(0.01, rel=0.5)
    assert routed.decision.reason.startswith(f"resident on i{i0}")


def test_sealserve_keeps_several_models_resident(costs: CostModel) -> None:
    d = Driver(SealservePolicy(priors=costs), costs)
    d.warm("small", 0.0)
    second = d.send("medium", 1.0)
    assert second.decision.kind is DecisionKind.RUN
    assert second.decision.evict == ()  # beside small, not instead of it
    assert d.group.cold_starts == 1


def test_sealserve_joins_a_load_under_way(costs: CostModel) -> None:
    d = Driver(SealservePolicy(priors=costs), costs, concurrency=4)
    d.warm("small", 0.0)
    first = d.send("large", 1.0)
    assert first.decision.load
    second = d.send("large", 1.5)
    assert second.decision.instance_id == first.decision.instance_id
    assert not second.decision.load
    assert second.decision.reason.startswith("join the load")
    assert second.decision.expected_s == pytest.approx(2.0 - 0.5 + 0.2)


def test_sealserve_waits_for_a_warm_slot_rather_than_loading_or_starting(
    costs: CostModel,
) -> None:
    d = Driver(SealservePolicy(priors=costs), costs, concurrency=1)
    d.warm("large", 0.0)
    busy = d.send("large", 1.0)
    assert busy.run_now
    waiting = d.send("large", 1.1)  # 0.1 s left on the slot beats 1 s + 2 s + 0.2 s cold
    assert waiting.decision.kind is DecisionKind.WAIT
    assert waiting.decision.reason.startswith("wait for a slot")
    assert waiting.decision.expected_s == pytest.approx(0.1 + 0.2)


def _named(costs: CostModel, zoo_model: str, count: int) -> list[str]:
    """Names outside the cost model that its stable hash maps to ``zoo_model``."""
    names = [f"m-{i}" for i in range(200) if costs.zoo_model_for(f"m-{i}") == zoo_model]
    return names[:count]


def _resident(group: FunctionGroup, model: str, rid: int, now: float) -> Instance:
    inst = group.start(None, now)
    group.mark_ready(inst.id, now)
    group.assign(rid, model, inst.id, now)
    group.mark_loaded(inst.id, model, now)
    group.complete(rid, now)
    return inst


def test_sealserve_evicts_the_model_least_likely_to_be_needed(costs: CostModel) -> None:
    hot, cold, new = _named(costs, "medium", 3)
    policy = SealservePolicy(priors=costs)
    cfg = GroupConfig(budget_mb=400.0, concurrency=4, keep_alive_s=600.0)
    group = FunctionGroup(cfg, model_memory_mb=costs.memory_mb)
    a = _resident(group, hot, 1, 0.0)
    b = _resident(group, cold, 2, 0.0)
    policy.on_arrival(RouteRequest(2, cold, 0.0), 0.0)
    for t in range(1, 300):
        policy.on_arrival(RouteRequest(10 + t, hot, float(t)), float(t))
    decision = policy.route(RouteRequest(999, new, 300.0), group, 300.0)
    assert (decision.instance_id, decision.evict) == (b.id, (cold,))
    assert f"next best load on i{a.id}" in decision.reason


def test_sealserve_moves_a_model_off_a_surplus_instance(costs: CostModel) -> None:
    (model,) = _named(costs, "small", 1)
    policy = SealservePolicy(priors=costs)
    group = FunctionGroup(GroupConfig(concurrency=4), model_memory_mb=costs.memory_mb)
    core = _resident(group, "small", 1, 0.0)
    surplus = _resident(group, model, 2, 0.0)
    for t in range(5):  # small is busy: its instance is the one to keep
        policy.on_arrival(RouteRequest(10 + t, "small", t * 0.1), t * 0.1)
    policy.on_arrival(RouteRequest(2, model, 0.0), 0.0)
    assert policy.target_instances(group, model, 1.0) == 1
    decision = policy.route(RouteRequest(3, model, 1.0), group, 1.0)
    assert decision.instance_id == core.id
    assert decision.load
    assert f"next best resident on i{surplus.id} (surplus)" in decision.reason


def test_sealserve_starts_only_when_the_predicted_load_needs_it(costs: CostModel) -> None:
    policy = SealservePolicy(priors=costs)
    d = Driver(policy, costs, concurrency=4)
    d.warm("small", 0.0)
    assert policy.target_instances(d.group, "medium", 1.0) == 1
    routed = d.send("medium", 1.0)
    assert routed.decision.kind is DecisionKind.RUN  # a load, not a second instance


def test_sealserve_starts_when_memory_needs_another_instance(costs: CostModel) -> None:
    policy = SealservePolicy(priors=costs)
    d = Driver(policy, costs, budget_mb=800.0, concurrency=4)
    for t in range(0, 20):
        d.warm("large", float(t) * 0.5)
    assert policy.target_instances(d.group, "medium", 10.0) == 2
    routed = d.send("medium", 10.0)
    assert routed.decision.kind is DecisionKind.START
    assert "(800 of 1000 MB of expected working set" in routed.decision.reason


def test_sealserve_learns_measured_costs(costs: CostModel) -> None:
    policy = SealservePolicy(priors=costs)
    d = Driver(policy, costs)
    routed = d.send("small", 0.0)
    iid = routed.decision.instance_id
    assert iid is not None
    d.router.instance_ready(iid, 3.0)
    d.router.model_loaded(iid, "small", 4.0)
    d.router.request_done(1, 4.5)
    stats = policy.stats.model("small")
    assert policy.stats.cold_start_s.value == pytest.approx(1.0 + 0.2 * (3.0 - 1.0))
    assert stats.load_s.value == pytest.approx(0.1 + 0.2 * (1.0 - 0.1))
    assert stats.exec_s.value == pytest.approx(0.01 + 0.2 * (0.5 - 0.01))


def test_sealserve_without_priors_starts_from_defaults(costs: CostModel) -> None:
    policy = SealservePolicy(default_infer_s=0.3, default_load_s=0.7, default_cold_start_s=1.5)
    d = Driver(policy, costs)
    assert d.send("small", 0.0).decision.expected_s == pytest.approx(1.5 + 0.7 + 0.3)


def test_make_policy_knows_every_name() -> None:
    assert make_policy("lru-multiplex", max_models=5).resident_limit == 5
    assert make_policy("sesemi").resident_limit is None
    assert make_policy("sesemi-1model").resident_limit == 1
    # the earlier name of the baseline still works, and names it
    assert type(make_policy("dedicated-uniform")) is DedicatedPolicy
    assert make_policy("dedicated-uniform").name == "dedicated"
    assert type(make_policy("dedicated-fitted")) is FittedDedicatedPolicy
    assert [make_policy(n).name for n in POLICY_NAMES] == list(POLICY_NAMES)
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")


def test_sealserve_drains_only_after_the_need_is_gone_for_a_keep_alive(
    costs: CostModel,
) -> None:
    big_a, big_b = _named(costs, "large", 2)
    (small,) = _named(costs, "small", 1)
    policy = SealservePolicy(priors=costs, horizon_s=100.0)
    d = Driver(policy, costs, budget_mb=800.0, concurrency=4, keep_alive_s=1000.0)
    for step in range(10):  # two large models that cannot share an instance, both busy
        d.warm(big_a, step * 2.0)
        d.warm(big_b, step * 2.0 + 1.0)
    assert len(d.group.instances) == 2
    assert policy.target_instances(d.group, small, 700.0) == 1  # the large ones went quiet
    soon = policy.route(RouteRequest(998, small, 700.0), d.group, 700.0)
    assert "(surplus)" not in soon.reason  # but two were needed within the keep-alive
    later = policy.route(RouteRequest(999, small, 3000.0), d.group, 3000.0)
    assert "(surplus)" in later.reason


def test_sealserve_starts_an_instance_once_evicted_models_keep_coming_back() -> None:
    costs = CostModel(
        cold_start_s=5.0,
        runtime_base_mb=100.0,
        models={"large": ModelCosts(load_s=2.0, infer_s=0.2, memory_mb=700.0)},
    )
    policy = SealservePolicy(priors=costs)
    d = Driver(policy, costs, budget_mb=800.0, concurrency=4)
    kinds = []
    for step in range(8):  # two models that cannot share an instance, taking turns
        model = ("a", "b")[step % 2]
        routed = d.send(model, step * 10.0)
        kinds.append(routed.decision.kind)
        iid = routed.decision.instance_id
        assert iid is not None
        if not d.group.instance(iid).is_ready:
            d.router.instance_ready(iid, step * 10.0 + 5.0)
        d.router.model_loaded(iid, model, step * 10.0 + 7.0)
        d.router.request_done(d.next_id, step * 10.0 + 7.2, exec_s=0.2)
        if routed.decision.kind is DecisionKind.START and step > 0:
            assert "shared with recent reloads" in routed.decision.reason
            break
    # a 5 s cold start loses to one eviction, but not to a run of them
    assert kinds[0] is DecisionKind.START
    assert kinds[1] is DecisionKind.RUN
    assert kinds[-1] is DecisionKind.START
    assert len(kinds) < 8


# -- sealserve on instances of a few sizes ------------------------------------------------------

#: 1,024 MB instances (924 MB for models) and 512 MB ones (412 MB).
SIZED = {"budget_mb": 924.0, "memory_mb": 1024, "sizes_mb": (512,), "concurrency": 4}


def test_sealserve_starts_the_smallest_shape_that_holds_the_model(costs: CostModel) -> None:
    d = Driver(SealservePolicy(priors=costs), costs, **SIZED)
    small = d.send("small", 0.0).decision
    assert small.kind is DecisionKind.START
    assert small.shape is not None
    assert (small.shape.memory_mb, small.shape.budget_mb) == (512, 412.0)
    assert small.reason.startswith("cold start of a 512 MB instance")
    large = d.send("large", 0.1).decision  # 700 MB: not in a 512 MB instance
    assert large.kind is DecisionKind.START
    assert large.shape is not None
    assert large.shape.memory_mb == 1024
    assert [i.memory_mb for i in d.group] == [512, 1024]


def test_sealserve_sizes_a_new_instance_for_the_working_set_left_out(costs: CostModel) -> None:
    # small and large have come every second for a minute: both are expected within the
    # horizon, 800 MB of working set that a 512 MB instance (412 for models) does not hold
    warm = SealservePolicy(priors=costs)
    cold = SealservePolicy(priors=costs)
    for t in range(60):
        for model in ("small", "large"):
            warm.on_arrival(RouteRequest(1000 + 2 * t, model, float(t)), float(t))
    # with large expected too, the first instance holds both (1,024 MB); alone, 512 MB
    first = Driver(warm, costs, **SIZED).send("small", 60.0).decision
    assert first.shape is not None
    assert first.shape.memory_mb == 1024
    assert "(0 of 800 MB of expected working set" in first.reason
    alone = Driver(cold, costs, **SIZED).send("small", 60.0).decision
    assert alone.shape is not None
    assert alone.shape.memory_mb == 512


def test_sealserve_refuses_a_model_no_shape_holds(costs: CostModel) -> None:
    d = Driver(SealservePolicy(priors=costs), costs, budget_mb=412.0, memory_mb=512)
    with pytest.raises(PackerError, match="more than the largest instance budget of 412 MB"):
        d.send("large", 0.0)


def test_sealserve_replaces_an_instance_twice_too_large(costs: CostModel) -> None:
    policy = SealservePolicy(priors=costs)
    d = Driver(policy, costs, keep_alive_s=60.0, **SIZED)
    for step in range(6):  # large and small share a 1,024 MB instance
        d.warm("large", step * 1.0)
        d.warm("small", step * 1.0 + 0.5)
    (big,) = d.group.instances
    assert big.memory_mb == 1024
    step = 0
    while len(d.group.instances) == 1 and step < 100:  # large goes quiet; small stays busy
        step += 1
        d.warm("small", 5.0 + step * 10.0)
    # large's chance of a request within a keep-alive fell, and with it the expected working
    # set, below what a 512 MB instance holds, for a whole keep-alive
    assert step > 6
    start = d.router.recent[-1]
    assert start.kind is DecisionKind.START
    assert start.shape is not None
    assert start.shape.memory_mb == 512
    assert f"to replace i{big.id} (512 MB less" in start.reason
    assert "paid by the resize" in start.reason
    # small moved; the old instance is surplus, and large waits there until it stops
    now = 5.0 + step * 10.0 + 1.0
    moved = d.send("small", now).decision
    assert (moved.instance_id, moved.load) == (start.instance_id, False)
    assert f"next best resident on i{big.id} (surplus)" in moved.reason
    d.router.request_done(d.next_id, now + 0.01)
    assert d.router.expire(now + 60.0) == (big.id,)
    assert [i.memory_mb for i in d.group] == [512]


def test_sealserve_keeps_serving_where_a_moving_model_is_resident(costs: CostModel) -> None:
    (model,) = _named(costs, "small", 1)  # loads in 0.1 s
    policy = SealservePolicy(priors=costs)
    group = FunctionGroup(GroupConfig(concurrency=4), model_memory_mb=costs.memory_mb)
    core = _resident(group, "medium", 1, 0.0)  # busy, and 0.4 s to load: its instance stays
    surplus = _resident(group, model, 2, 0.0)
    for t in range(5):
        policy.on_arrival(RouteRequest(10 + t, "medium", t * 0.1), t * 0.1)
    policy.on_arrival(RouteRequest(2, model, 0.0), 0.0)
    first = policy.route(RouteRequest(3, model, 1.0), group, 1.0)
    assert (first.instance_id, first.load) == (core.id, True)  # the move: one load
    group.assign(3, model, core.id, 1.0)
    # while the model loads on the core, its requests still run where it is resident
    during = policy.route(RouteRequest(4, model, 1.05), group, 1.05)
    assert (during.instance_id, during.load) == (surplus.id, False)
    assert during.reason.startswith(f"resident on i{surplus.id} (surplus)")
    group.mark_loaded(core.id, model, 1.1)
    after = policy.route(RouteRequest(5, model, 1.2), group, 1.2)
    assert (after.instance_id, after.load) == (core.id, False)
