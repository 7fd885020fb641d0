from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sealserve.bench._common import interleaved, median, percentile, ratio, write_json


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile([1, 2, 3, 4, 5], 100) == 5
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q must be"):
        percentile([1], 101)


def test_interleaved_runs_round_robin() -> None:
    order: list[str] = []
    out = interleaved(
        {"a": lambda: order.append("a") or 1, "b": lambda: order.append("b") or 2}, repeats=3
    )
    assert order == ["a", "b"] * 3
    assert out == {"a": [1, 1, 1], "b": [2, 2, 2]}


def test_ratio_and_median() -> None:
    assert ratio(3.0, 1.5) == 2.0
    assert math.isnan(ratio(1.0, 0.0))
    assert median([3, 1, 2]) == 2


def test_write_json_replaces_nan(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sub" / "r.json", {"x": math.nan, "y": [1.0, math.inf]})
    assert json.loads(path.read_text()) == {"x": None, "y": [1.0, None]}
