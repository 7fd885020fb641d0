"""The function group: instances, slots, memory budget with LRU eviction, keep-alive, metering."""

from __future__ import annotations

import pytest

from sealserve.config import PlatformSettings, RuntimeSettings
from sealserve.errors import PackerError
from sealserve.packer import FunctionGroup, GroupConfig, InstanceShape, InstanceState

MB = {"a": 300.0, "b": 300.0, "c": 300.0, "big": 900.0, "huge": 2000.0}


def group(**kw: object) -> FunctionGroup:
    base: dict[str, object] = {"budget_mb": 1000.0, "runtime_base_mb": 100.0, "concurrency": 2}
    base.update(kw)
    return FunctionGroup(GroupConfig(**base), model_memory_mb=MB.__getitem__)  # type: ignore[arg-type]


def ready(g: FunctionGroup, now: float = 0.0) -> int:
    inst = g.start(None, now)
    g.mark_ready(inst.id, now)
    return inst.id


def test_a_request_cannot_complete_before_it_runs() -> None:
    g = group()
    inst = g.start(None, 0.0)
    g.assign(1, "a", inst.id, 0.0)
    with pytest.raises(PackerError, match="has not run yet"):
        g.complete(1, 1.0)
    assert inst.in_flight == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"budget_mb": 0.0}, "budget_mb must be a finite number > 0, got 0.0"),
        ({"keep_alive_s": -1.0}, "keep_alive_s must be a finite number > 0, got -1.0"),
        ({"concurrency": 0}, "concurrency must be an int >= 1, got 0"),
        ({"max_instances": True}, "max_instances must be an int >= 1, got True"),
        ({"max_models": 0}, "max_models must be >= 1 or None, got 0"),
        ({"memory_mb": 512}, "memory_mb must be at least budget_mb"),
        ({"name": ""}, "name must be a non-empty function name"),
    ],
)
def test_config_names_the_bad_argument(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GroupConfig(**kw)  # type: ignore[arg-type]


def test_memory_is_sized_in_steps() -> None:
    cfg = GroupConfig(budget_mb=1000.0, runtime_base_mb=100.0, memory_step_mb=128)
    assert cfg.shape == InstanceShape(function="group", memory_mb=1152, budget_mb=1000.0)
    assert cfg.fitted_memory_mb(28.0) == 128
    assert cfg.fitted_memory_mb(29.0) == 256
    assert cfg.fitted_shape("group/a", 300.0).memory_mb == 512


def test_from_settings_uses_the_platform_and_runtime_sections() -> None:
    cfg = GroupConfig.from_settings(
        PlatformSettings(keep_alive_s=60.0, max_instances=2, instance_concurrency=3),
        RuntimeSettings(memory_budget_mb=512),
    )
    assert (cfg.keep_alive_s, cfg.max_instances, cfg.concurrency) == (60.0, 2, 3)
    assert cfg.budget_mb == 512.0
    assert cfg.shape.memory_mb == 2048


def test_start_ready_load_run_complete() -> None:
    g = group()
    inst = g.start(None, 0.0)
    assert inst.state is InstanceState.STARTING
    first = g.assign(1, "a", inst.id, 0.0)
    assert (first.load_now, first.run_now) == (False, False)  # the load waits for the start
    assert inst.is_loading("a")
    assert not inst.holds("a")
    joined = g.assign(2, "a", inst.id, 0.1)
    assert (joined.load_now, joined.run_now) == (False, False)
    assert g.model_loads == 1  # the second request joined the planned load
    assert inst.free_slots == 0
    actions = g.mark_ready(inst.id, 1.0)
    assert actions.loads == ("a",)
    assert inst.load_started_at("a") == 1.0
    actions = g.mark_loaded(inst.id, "a", 1.5)
    assert actions.run == (1, 2)
    assert inst.state is InstanceState.BUSY
    done_inst, model, since = g.complete(1, 1.6)
    assert (done_inst.id, model, since) == (inst.id, "a", 1.5)
    g.complete(2, 1.7)
    assert inst.state is InstanceState.IDLE
    assert inst.last_used == 1.7
    assert g.completed == 2


def test_a_full_instance_takes_no_more_requests() -> None:
    g = group()
    iid = ready(g)
    g.assign(1, "a", iid, 0.0)
    g.assign(2, "a", iid, 0.0)
    assert g.plan(iid, "a") is None
    with pytest.raises(PackerError, match="cannot take a request"):
        g.assign(3, "a", iid, 0.0)


def test_loads_evict_the_least_recently_used_idle_models() -> None:
    g = group()
    iid = ready(g)
    for rid, model in enumerate(["a", "b", "c"]):
        g.assign(rid, model, iid, float(rid))
        g.mark_loaded(iid, model, float(rid))
        g.complete(rid, float(rid))
    inst = g.instance(iid)
    assert inst.loaded_models == ("a", "b", "c")
    g.assign(10, "a", iid, 5.0)  # touch a: b is now the least recently used
    plan = g.plan(iid, "big")
    assert plan is None  # a is in use: evicting b and c frees 600 MB, not 900
    g.complete(10, 6.0)
    plan = g.plan(iid, "big")
    assert plan is not None
    assert plan.evict == ("b", "c", "a")
    assignment = g.assign(11, "big", iid, 7.0)
    assert assignment.evicted == ("b", "c", "a")
    assert inst.models == ("big",)
    assert inst.used_mb <= inst.budget_mb
    assert g.evictions == 3


def test_a_model_larger_than_the_budget_never_fits() -> None:
    g = group()
    iid = ready(g)
    assert not g.fits("huge")
    assert g.plan(iid, "huge") is None


def test_the_resident_model_cap_evicts_too() -> None:
    g = group(max_models=1)
    iid = ready(g)
    g.assign(1, "a", iid, 0.0)
    g.mark_loaded(iid, "a", 0.1)
    assert g.plan(iid, "b") is None  # a is in use and the cap is one model
    g.complete(1, 0.2)
    plan = g.plan(iid, "b")
    assert plan is not None
    assert plan.evict == ("a",)


def test_max_instances_applies_per_function() -> None:
    g = group(max_instances=1)
    g.start(None, 0.0)
    assert not g.can_start()
    with pytest.raises(PackerError, match="max_instances=1"):
        g.start(None, 0.0)
    other = InstanceShape(function="group/a", memory_mb=512, budget_mb=300.0)
    assert g.can_start(other)
    g.start(other, 0.0)
    assert g.count("group/a") == 1


def test_keep_alive_then_scale_to_zero() -> None:
    g = group(keep_alive_s=10.0)
    iid = ready(g)
    g.assign(1, "a", iid, 0.0)
    g.mark_loaded(iid, "a", 0.5)
    assert g.next_expiry() is None  # busy
    g.complete(1, 1.0)
    assert g.next_expiry() == 11.0
    assert g.expired(10.9) == ()
    (inst,) = g.expired(11.0)
    g.stop(inst.id, 11.0)
    assert inst.state is InstanceState.STOPPED
    assert inst.models == ()
    assert g.instances == ()
    with pytest.raises(PackerError, match="not alive"):
        g.instance(iid)


def test_an_instance_with_requests_cannot_stop_but_can_fail() -> None:
    g = group()
    iid = ready(g)
    g.assign(1, "a", iid, 0.0)
    with pytest.raises(PackerError, match="has requests in flight"):
        g.stop(iid, 1.0)
    assert g.fail(iid, 1.0) == (1,)
    assert g.instances == ()
    with pytest.raises(PackerError, match="not in flight"):
        g.complete(1, 2.0)


def test_gb_seconds_are_memory_times_time_alive() -> None:
    g = group(keep_alive_s=10.0)
    first = g.start(None, 0.0)  # 1152 MB
    g.mark_ready(first.id, 1.0)
    small = InstanceShape(function="group/a", memory_mb=512, budget_mb=300.0)
    second = g.start(small, 5.0)
    g.mark_ready(second.id, 6.0)
    g.stop(first.id, 11.0)
    assert g.gb_seconds(20.0) == pytest.approx(1152 / 1024 * 11.0 + 512 / 1024 * 15.0)
    assert g.intervals() == ((1152, 0.0, 11.0), (512, 5.0, None))


def test_waiting_requests_are_counted_per_model() -> None:
    g = group()
    g.note_waiting(1, "a")
    g.note_waiting(2, "b")
    g.note_waiting(3, "a")
    assert (g.waiting_count("a"), g.waiting_count()) == (2, 3)
    g.forget_waiting(1)
    assert g.waiting_count("a") == 1


def test_an_instance_of_given_memory_gives_its_runtime_the_rest() -> None:
    cfg = GroupConfig.for_instance(memory_mb=2048, runtime_base_mb=44.5, concurrency=2)
    assert cfg.shape == InstanceShape(function="group", memory_mb=2048, budget_mb=2003.5)
    assert cfg.concurrency == 2
    with pytest.raises(ValueError, match="memory_mb must exceed runtime_base_mb"):
        GroupConfig.for_instance(memory_mb=100, runtime_base_mb=100.0)


# -- shapes: a few sizes of the same runtime build -----------------------------------------------


def test_sizes_keep_the_groups_runtime_reserve() -> None:
    cfg = GroupConfig.for_instance(memory_mb=2048, runtime_base_mb=44.0, sizes_mb=(1024, 512))
    assert cfg.reserve_mb == 44.0
    assert [(s.function, s.memory_mb, s.budget_mb) for s in cfg.shapes] == [
        ("group", 512, 468.0),
        ("group", 1024, 980.0),
        ("group", 2048, 2004.0),
    ]
    # an explicit budget sets the reserve: 2,048 MB billed, 1,024 MB for models
    live = GroupConfig(budget_mb=1024.0, memory_mb=2048, sizes_mb=(1536, 3072, 2048))
    assert [(s.memory_mb, s.budget_mb) for s in live.shapes] == [
        (1536, 512.0),
        (2048, 1024.0),
        (3072, 2048.0),
    ]
    assert GroupConfig(budget_mb=1024.0, memory_mb=2048).shapes == (live.shape,)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((1024,), "larger than the runtime reserve of 1024 MB .* got 1024"),
        ((4096, 0), "got 0"),
        ((True,), "got True"),
        ([512], "sizes_mb must be a tuple of ints, got \\[512\\]"),
    ],
)
def test_sizes_without_room_for_models_are_refused(sizes: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GroupConfig(budget_mb=1024.0, memory_mb=2048, sizes_mb=sizes)  # type: ignore[arg-type]


def test_from_settings_takes_the_sizes() -> None:
    cfg = GroupConfig.from_settings(PlatformSettings(), RuntimeSettings(), sizes_mb=(1536, 3072))
    assert [s.memory_mb for s in cfg.shapes] == [1536, 2048, 3072]


def test_the_groups_instances_take_only_its_shapes() -> None:
    g = FunctionGroup(
        GroupConfig(budget_mb=1000.0, runtime_base_mb=100.0, memory_mb=1100, sizes_mb=(612,)),
        model_memory_mb=MB.__getitem__,
    )
    small = g.config.shapes[0]
    assert (small.memory_mb, small.budget_mb) == (612, 512.0)
    inst = g.start(small, 0.0)
    assert (inst.memory_mb, inst.budget_mb) == (612, 512.0)
    with pytest.raises(PackerError, match="is not one of function 'group''s shapes"):
        g.start(InstanceShape(function="group", memory_mb=800, budget_mb=700.0), 0.0)
    with pytest.raises(PackerError, match="not one of"):  # a known size with another budget
        g.start(InstanceShape(function="group", memory_mb=612, budget_mb=600.0), 0.0)
    # other functions (dedicated's) are sized as their policy says
    g.start(InstanceShape(function="group/a", memory_mb=800, budget_mb=700.0), 0.0)


def test_an_instance_never_holds_more_than_its_shapes_budget() -> None:
    g = FunctionGroup(
        GroupConfig(budget_mb=1000.0, runtime_base_mb=100.0, memory_mb=1100, sizes_mb=(612,)),
        model_memory_mb=MB.__getitem__,
    )
    small = g.start(g.config.shapes[0], 0.0)  # 512 MB for models
    g.mark_ready(small.id, 0.0)
    g.assign(1, "a", small.id, 0.0)
    assert not g.fits("big", g.config.shapes[0])
    assert g.fits("big")  # the group's own shape holds it
    assert g.plan(small.id, "big") is None
    assert g.plan(small.id, "b") is None  # a (300 MB) is in use; 300 + 300 > 512
    g.mark_loaded(small.id, "a", 0.1)
    g.complete(1, 0.2)
    plan = g.plan(small.id, "b")
    assert plan is not None
    assert plan.evict == ("a",)


def test_gb_seconds_bill_each_instance_by_its_shape() -> None:
    g = FunctionGroup(
        GroupConfig(budget_mb=1948.0, runtime_base_mb=100.0, memory_mb=2048, sizes_mb=(512,)),
        model_memory_mb=MB.__getitem__,
    )
    big = g.start(None, 0.0)
    small = g.start(g.config.shapes[0], 2.0)
    for inst in (big, small):
        g.mark_ready(inst.id, 3.0)
    g.stop(small.id, 10.0)
    g.stop(big.id, 30.0)
    assert g.intervals() == ((2048, 0.0, 30.0), (512, 2.0, 10.0))
    assert g.gb_seconds(40.0) == pytest.approx(2.0 * 30.0 + 0.5 * 8.0)


def test_a_load_evicts_what_it_needs_and_no_more() -> None:
    """Small models used long ago and a large one used lately: a newcomer that needs the
    large one's room evicts it alone, not the small ones first (three evictions and a reload
    each, for what one eviction frees)."""
    sizes = {"s1": 100.0, "s2": 100.0, "s3": 100.0, "big": 600.0, "new": 600.0}
    g = FunctionGroup(
        GroupConfig(budget_mb=1000.0, runtime_base_mb=100.0, concurrency=2),
        model_memory_mb=sizes.__getitem__,
    )
    iid = ready(g)
    for rid, model in enumerate(["s1", "s2", "s3", "big"]):
        g.assign(rid, model, iid, float(rid))
        g.mark_loaded(iid, model, float(rid))
        g.complete(rid, float(rid))
    plan = g.plan(iid, "new")
    assert plan is not None
    assert plan.evict == ("big",)
    g.assign(9, "new", iid, 9.0)
    assert g.instance(iid).models == ("s1", "s2", "s3", "new")
    assert g.evictions == 1
