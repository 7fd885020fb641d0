from __future__ import annotations

from pathlib import Path

import pytest

from sealserve.bench.suite import BENCHMARKS, commands


def test_every_benchmark_runs_in_layer_order_with_its_json(tmp_path: Path) -> None:
    lines = commands(tmp_path, quick=True)
    assert [line[4] for line in lines] == list(BENCHMARKS)
    for line in lines:
        assert str(tmp_path / f"{line[4]}.json") in line


def test_the_packer_uses_the_runtime_s_measured_costs(tmp_path: Path) -> None:
    (runtime, packer) = commands(tmp_path, quick=False, only=["runtime", "packer"])
    costs = str(tmp_path / "costs.json")
    assert runtime[runtime.index("--costs-out") + 1] == costs
    assert packer[packer.index("--costs") + 1] == costs
    assert "--quick" not in runtime


def test_the_packer_alone_measures_its_own_costs_when_none_were_saved(tmp_path: Path) -> None:
    (packer,) = commands(tmp_path, quick=False, only=["packer"])
    assert "--costs" not in packer


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown benchmarks"):
        commands(tmp_path, quick=True, only=["gpu"])
