"""The GB-second bounds: exact packing into shapes, and both ideal packers on tiny runs."""

from __future__ import annotations

import pytest

from sealserve.packer import (
    CostModel,
    FittedDedicatedPolicy,
    GroupConfig,
    Trace,
    TraceRequest,
    ideal_packing_gb_s,
    ideal_shaped_gb_s,
    pack_memory_mb,
    simulate,
)
from sealserve.packer._reference import EXACT_UP_TO

# 512 MB (412 for models), 1,024 (924), 2,048 (1,948)
CONFIG = GroupConfig(budget_mb=1948.0, runtime_base_mb=100.0, memory_mb=2048, sizes_mb=(512, 1024))


@pytest.mark.parametrize(
    ("sizes", "memory"),
    [
        ((), 0),
        ((100.0,), 512),
        ((400.0, 400.0), 1024),  # one 1,024 (800 in 924), not two 512s (the same memory)
        ((700.0, 300.0), 1536),  # 700 needs a 1,024; 300 beside it leaves 924 - 1,000 < 0
        ((900.0, 900.0, 100.0), 2048),  # all in one 2,048 (1,900 in 1,948)
        ((900.0, 900.0, 200.0), 2560),  # 2,048 (1,800) + 512, or 1,024 x 2 + 512
        ((300.0,) * 6, 2048),  # 1,800 in one 2,048, or three each in two 1,024s
        ((1948.0,), 2048),
    ],
)
def test_packing_finds_the_least_memory(sizes: tuple[float, ...], memory: int) -> None:
    assert pack_memory_mb(sizes, CONFIG.shapes) == memory


def test_packing_beats_first_fit_where_it_can() -> None:
    # first fit decreasing opens a 2,048 for the 1,000 MB left; a 1,024 and a 512 hold it too
    assert pack_memory_mb((900.0, 100.0), CONFIG.shapes) == 1024 + 512
    many = (100.0,) * (EXACT_UP_TO + 1)  # past the exact limit: first fit decreasing
    assert pack_memory_mb(many, CONFIG.shapes) == 2048
    with pytest.raises(ValueError, match="a model of 3000 MB fits in no shape"):
        pack_memory_mb((3000.0,), CONFIG.shapes)


def test_both_ideal_packers_keep_dedicateds_residency(costs: CostModel) -> None:
    rows = (TraceRequest(0.0, "small"), TraceRequest(5.0, "medium"), TraceRequest(400.0, "large"))
    run = simulate(Trace(rows), FittedDedicatedPolicy(), costs, config=CONFIG, jitter=0)
    assert [f for f, _, _ in run.function_intervals] == [
        "group/small",
        "group/medium",
        "group/large",
    ]
    (_, s0, s1), (_, m0, m1), (_, l0, l1) = run.function_intervals
    # fluid: each model's memory while its function was alive, plus one runtime all along
    fluid = (100 * (s1 - s0) + 300 * (m1 - m0) + 700 * (l1 - l0) + 100 * run.end_s) / 1024
    assert ideal_packing_gb_s(run, costs, CONFIG) == pytest.approx(fluid)
    # shapes: small alone in a 512, then small + medium (400 in 412) in a 512, medium alone,
    # then large alone in a 1,024
    shaped, exact = ideal_shaped_gb_s(run, costs, CONFIG)
    assert exact
    assert shaped == pytest.approx((512 * (m1 - s0) + 1024 * (l1 - l0)) / 1024)
    assert s1 < l0  # (the two periods do not overlap)
