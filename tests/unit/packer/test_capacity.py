"""Sizing a packed group: needs, the stabilization window, the core, the shape to start, resizes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sealserve.packer import FunctionGroup, GroupConfig, Instance
from sealserve.packer._capacity import (
    Need,
    NeedWindow,
    Sized,
    core_of,
    resize_of,
    shape_to_start,
)

MB = {"a": 300.0, "b": 300.0, "c": 400.0, "big": 900.0, "huge": 3000.0}
# shapes: 512 MB (412 for models), 1024 (924), 2048 (1948)
CONFIG = GroupConfig(budget_mb=1948.0, runtime_base_mb=100.0, memory_mb=2048, sizes_mb=(512, 1024))
SMALL, MEDIUM, LARGE = CONFIG.shapes


def group_with(*sizes: int, ready: bool = True) -> tuple[FunctionGroup, list[Instance]]:
    g = FunctionGroup(CONFIG, model_memory_mb=MB.__getitem__)
    by_size = {s.memory_mb: s for s in CONFIG.shapes}
    out = []
    for size in sizes:
        inst = g.start(by_size[size], 0.0)
        if ready:
            g.mark_ready(inst.id, 0.0)
        out.append(inst)
    return g, out


def hold(g: FunctionGroup, inst: Instance, *models: str) -> None:
    for rid, model in enumerate(models, start=100 * (inst.id + 1)):
        g.assign(rid, model, inst.id, 0.0)
        g.mark_loaded(inst.id, model, 0.0)
        g.complete(rid, 0.0)


def test_a_need_is_covered_by_budgets_and_count() -> None:
    _, (small, medium) = group_with(512, 1024)
    assert Need(1336.0, 2).covered_by([small, medium])
    assert not Need(1337.0, 1).covered_by([small, medium])
    assert not Need(100.0, 3).covered_by([small, medium])
    assert Need(0.0, 0).covered_by([])
    assert Need(1.0, 2).max(Need(2.0, 1)) == Need(2.0, 2)
    with pytest.raises(ValueError, match=r"memory_mb must be >= 0, got -1\.0"):
        Need(-1.0, 1)


def test_the_window_keeps_the_largest_need_for_its_length() -> None:
    window = NeedWindow(window_s=10.0)
    assert window.largest(Need(5.0, 1), 0.0) == Need(5.0, 1)
    window.observe(Need(900.0, 1), 0.0)
    window.observe(Need(100.0, 3), 4.0)
    window.observe(Need(300.0, 1), 8.0)
    assert window.largest(Need(50.0, 1), 9.0) == Need(900.0, 3)
    assert window.largest(Need(50.0, 1), 12.0) == Need(300.0, 3)  # the 900 MB is older than 10 s
    assert window.largest(Need(50.0, 1), 17.0) == Need(300.0, 1)
    assert window.largest(Need(50.0, 1), 30.0) == Need(50.0, 1)
    with pytest.raises(ValueError, match="window_s must be > 0, got 0"):
        NeedWindow(window_s=0)


def test_the_core_covers_the_need_with_the_least_memory() -> None:
    _, insts = group_with(1024, 512, 1024, 2048)
    ids = [i.id for i in insts]
    # 1,300 MB: 1024 + 512 (924 + 412 = 1,336) is the cheapest cover, the oldest of equals
    assert core_of(insts, Need(1300.0, 1)) == {ids[0], ids[1]}
    # 1,900 MB: 2048 alone (1,948) beats 1024 + 1024 (1,848 is short) and 1024 + 512 + 1024
    assert core_of(insts, Need(1900.0, 1)) == {ids[3]}
    # two instances for slots: the two smallest that hold 500 MB
    assert core_of(insts, Need(500.0, 2)) == {ids[0], ids[1]}
    # nothing covers it: every instance is core
    assert core_of(insts, Need(9000.0, 1)) == set(ids)
    assert core_of([], Need(10.0, 1)) == frozenset()


def test_among_equal_cores_the_one_cheapest_to_drain_is_kept() -> None:
    _, (old, young) = group_with(1024, 1024)
    assert core_of([old, young], Need(500.0, 1)) == {old.id}
    costs = {old.id: 3.0, young.id: 1.0}  # moving old's models costs more: keep old
    assert core_of([old, young], Need(500.0, 1), drain_cost=lambda i: costs[i.id]) == {old.id}
    costs = {old.id: 1.0, young.id: 3.0}
    assert core_of([old, young], Need(500.0, 1), drain_cost=lambda i: costs[i.id]) == {young.id}


def test_past_the_exhaustive_limit_the_oldest_that_cover_it_are_core() -> None:
    _, insts = group_with(2048, 512, 512, 512)
    ids = [i.id for i in insts]
    assert core_of(insts, Need(900.0, 1), exhaustive_up_to=3) == {ids[0]}
    assert core_of(insts, Need(2200.0, 1), exhaustive_up_to=3) == {ids[0], ids[1]}
    assert core_of(insts, Need(900.0, 1)) == {ids[1], ids[2], ids[3]}  # 1,236 MB in 1,536


def test_a_new_instance_is_the_smallest_shape_that_holds_the_model() -> None:
    assert shape_to_start(CONFIG.shapes, model_mb=300.0) == SMALL
    assert shape_to_start(CONFIG.shapes, model_mb=412.0) == SMALL
    assert shape_to_start(CONFIG.shapes, model_mb=413.0) == MEDIUM
    assert shape_to_start(CONFIG.shapes, model_mb=1900.0) == LARGE
    assert shape_to_start(CONFIG.shapes, model_mb=3000.0) is None


def test_a_new_instance_holds_the_working_set_the_alive_ones_leave_out() -> None:
    # the smallest shape that holds the shortfall as well as the model
    assert shape_to_start(CONFIG.shapes, model_mb=300.0, shortfall_mb=300.0) == SMALL
    assert shape_to_start(CONFIG.shapes, model_mb=300.0, shortfall_mb=600.0) == MEDIUM
    assert shape_to_start(CONFIG.shapes, model_mb=300.0, shortfall_mb=925.0) == LARGE
    # more than any shape holds: the largest; none covered (a negative shortfall): the model's
    assert shape_to_start(CONFIG.shapes, model_mb=300.0, shortfall_mb=5000.0) == LARGE
    assert shape_to_start(CONFIG.shapes, model_mb=413.0, shortfall_mb=-200.0) == MEDIUM
    assert shape_to_start(CONFIG.shapes, model_mb=3000.0, shortfall_mb=5000.0) is None


def _largest(g: FunctionGroup) -> Callable[[Sized], float]:
    def largest(inst: Sized) -> float:
        return max((g.model_memory_mb(m) for m in g.instance(inst.id).models), default=0.0)

    return largest


def test_a_smaller_instance_replaces_a_core_one_that_is_twice_too_large() -> None:
    g, (medium, large) = group_with(1024, 2048)
    hold(g, medium, "big")
    hold(g, large, "a")
    need = Need(1300.0, 1)  # big and a: 924 + 412 in 1,536 MB, not 1,948 in 2,048
    assert core_of([medium, large], need) == {large.id}  # of the alive ones, the cheapest
    resize = resize_of([medium, large], need, CONFIG.shapes, largest_model_mb=_largest(g))
    assert resize is not None
    assert (resize.shape, resize.kept, resize.replaced) == (SMALL, {medium.id}, {large.id})
    assert resize.saving_mb == 512


def test_a_resize_must_save_its_own_memory() -> None:
    g, (medium,) = group_with(1024)
    hold(g, medium, "c")  # 400 MB in 924: a 512 MB instance (412) holds it
    largest = _largest(g)
    resize = resize_of([medium], Need(400.0, 1), CONFIG.shapes, largest_model_mb=largest)
    assert resize is not None
    assert (resize.shape, resize.replaced, resize.saving_mb) == (SMALL, {medium.id}, 512)
    # 1,024 -> 768 would save a quarter: not worth two instances alive together a keep-alive
    odd = GroupConfig(budget_mb=924.0, runtime_base_mb=100.0, memory_mb=1024, sizes_mb=(768,))
    assert resize_of([medium], Need(400.0, 1), odd.shapes, largest_model_mb=largest) is None


def test_no_resize_when_the_need_or_a_model_wants_the_memory() -> None:
    g, (medium, large) = group_with(1024, 2048)
    hold(g, medium, "a")
    hold(g, large, "big", "c")
    largest = _largest(g)
    shapes = CONFIG.shapes
    # 1,900 MB: only the 2,048 MB instance holds it, and nothing smaller does
    assert resize_of([medium, large], Need(1900.0, 1), shapes, largest_model_mb=largest) is None
    # 1,800 MB: 924 + 924 would hold it, in as much memory as the 2,048 alone: no saving
    assert resize_of([medium, large], Need(1800.0, 1), shapes, largest_model_mb=largest) is None
    # 1,300 MB: 924 + 412; big (900 MB) moves to the 1,024 MB instance, which holds it
    resize = resize_of([medium, large], Need(1300.0, 1), shapes, largest_model_mb=largest)
    assert resize is not None
    assert (resize.shape, resize.kept, resize.replaced) == (SMALL, {medium.id}, {large.id})
    # ... but a model that no remaining instance could hold keeps the configuration
    assert (
        resize_of([medium, large], Need(1300.0, 1), shapes, largest_model_mb=lambda i: 1000.0)
        is None
    )


def test_no_resize_with_many_instances_or_none() -> None:
    g, insts = group_with(2048, 2048, 2048)
    for inst in insts:
        hold(g, inst, "a")
    largest = _largest(g)
    resize = resize_of(insts, Need(300.0, 1), CONFIG.shapes, largest_model_mb=largest)
    assert resize is not None
    assert (resize.shape, len(resize.replaced)) == (SMALL, 3)
    assert (
        resize_of(
            insts, Need(300.0, 1), CONFIG.shapes, largest_model_mb=largest, exhaustive_up_to=3
        )
        is None
    )
    assert resize_of([], Need(300.0, 1), CONFIG.shapes, largest_model_mb=largest) is None
