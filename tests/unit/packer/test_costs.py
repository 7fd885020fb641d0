"""The cost model: its JSON schema, validation, and the stable choice of a zoo model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sealserve.packer import COSTS_SCHEMA, CostModel, ModelCosts


def test_json_round_trip(costs: CostModel, tmp_path: Path) -> None:
    path = costs.save(tmp_path / "costs.json")
    again = CostModel.load(path)
    assert again == costs
    data = json.loads(path.read_text())
    assert data["schema"] == COSTS_SCHEMA
    assert data["cold_start_ms"] == 1000.0
    assert data["models"]["small"] == {
        "load_ms": 100.0,
        "infer_ms": 10.0,
        "memory_mb": 100.0,
        "file_mb": 20.0,
    }


def test_measured_models_keep_their_costs(costs: CostModel) -> None:
    assert costs.zoo_model_for("large") == "large"
    assert costs.infer_s("large") == 0.2
    assert costs.load_s("medium") == 0.4
    assert costs.memory_mb("small") == 100.0


def test_other_names_take_a_zoo_model_by_a_stable_hash(costs: CostModel) -> None:
    # SHA-256 of the name, not Python's per-process salted hash(): the same on every run.
    assert [costs.zoo_model_for(f"m-{i}") for i in range(5)] == [
        "medium",
        "medium",
        "small",
        "medium",
        "large",
    ]
    assert costs.costs_for("m-4") is costs.models["large"]


def _valid(costs: CostModel) -> dict[str, Any]:
    return costs.to_json()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema="other/1"), "'schema' has value 'other/1'"),
        (lambda d: d.pop("cold_start_ms"), "missing 'cold_start_ms'"),
        (lambda d: d.update(cold_start_ms=-1), "cold_start_ms has value -1. Must be finite"),
        (lambda d: d.update(runtime_base_mb="x"), "runtime_base_mb has value 'x'. Not a number"),
        (lambda d: d.update(models={}), "'models' must be a non-empty object"),
        (lambda d: d["models"]["small"].pop("infer_ms"), "models.small is missing 'infer_ms'"),
        (lambda d: d["models"]["small"].update(load_ms=0), "models.small.load_ms has value 0"),
        (lambda d: d["models"].update(bad=3), "models.bad must be an object"),
        (lambda d: d.update(methods={"a": 1}), "'methods' must be an object of strings"),
        (lambda d: d.update(source=3), "'source' has value 3. Not a string"),
    ],
)
def test_validation_names_the_field_and_value(costs: CostModel, edit: Any, message: str) -> None:
    data = copy.deepcopy(_valid(costs))
    edit(data)
    with pytest.raises(ValueError, match=message):
        CostModel.from_json(data)


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        CostModel.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CostModel.load(bad)
    with pytest.raises(ValueError, match="expected a JSON object"):
        CostModel.from_json([1, 2])


def test_model_costs_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"infer_s has value 0\.0"):
        ModelCosts(load_s=1.0, infer_s=0.0, memory_mb=1.0)
    with pytest.raises(ValueError, match="'models' is empty"):
        CostModel(cold_start_s=1.0, runtime_base_mb=1.0, models={})
