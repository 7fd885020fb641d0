"""``sealserve bench runtime``'s pure parts: ordering, goals, the packer cost model, the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sealserve.bench.runtime import (
    RuntimeBenchConfig,
    _alternating,
    _goals,
    cost_model,
)
from sealserve.cli import app
from sealserve.packer import CostModel


def results(sealed: float, plain: float, baseline: float) -> dict[str, Any]:
    cold = {
        "sandbox_start": 600.0,
        "runtime_start": 900.0,
        "attestation_key_release": 40.0,
        "model_fetch": 30.0,
        "model_unseal_session": 130.0,
        "input_unseal": 0.5,
        "inference": 20.0,
        "output_seal": 0.1,
    }
    model = {
        "sealed_p50_ms": sealed,
        "plain_p50_ms": plain,
        "sealed_over_plain": sealed / plain,
        "baseline_mode_p50_ms": baseline,
        "baseline_over_semirt": baseline / sealed,
        "cold_start_ms": cold,
        "model_memory_mb": 60.0,
        "sealed_model_mb": 13.5,
    }
    return {
        "models": {"mobilenet-v2": model, "resnet-50": dict(model)},
        "runtime_base_mb": 80.0,
        "environment": {"cpus": 2},
    }


def test_alternating_puts_each_side_first_half_of_the_time() -> None:
    order: list[str] = []
    a, b = _alternating(
        lambda: order.append("a") or 1, lambda: order.append("b") or 2, rounds=4, tick=lambda: None
    )
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert (a, b) == ([1, 1, 1, 1], [2, 2, 2, 2])


def test_goals_say_what_was_met() -> None:
    goals = _goals(results(sealed=10.0, plain=9.0, baseline=80.0)["models"])
    assert goals["mobilenet-v2 sealed/plain <= 1.15"]["met"] is True
    assert goals["resnet-50 sealed/plain <= 1.05"]["met"] is False
    assert goals["mobilenet-v2 SeMIRT >= 5.0x faster than the baseline mode"]["met"] is True


def test_the_cost_model_is_what_the_packer_reads(tmp_path: Path) -> None:
    model = cost_model(results(sealed=10.0, plain=9.0, baseline=80.0))
    assert model.source == "sealserve-runtime"
    assert model.cold_start_s == pytest.approx(1.5)
    costs = model.costs_for("mobilenet-v2")
    assert costs.load_s == pytest.approx(0.2)
    assert costs.infer_s == pytest.approx(0.010)
    assert costs.memory_mb == 60.0
    path = model.save(tmp_path / "costs.json")
    assert CostModel.load(path) == model


def test_config_is_validated_and_quick_is_smaller() -> None:
    quick = RuntimeBenchConfig.quick()
    full = RuntimeBenchConfig()
    assert quick.warm_instances * quick.warm_rounds < full.warm_instances * full.warm_rounds
    with pytest.raises(ValueError, match="warm_rounds"):
        RuntimeBenchConfig(warm_rounds=0)
    with pytest.raises(ValueError, match="models"):
        RuntimeBenchConfig(models=())


def test_the_command_helps() -> None:
    result = CliRunner().invoke(app, ["bench", "runtime", "--help"])
    assert result.exit_code == 0
    for option in ("--json", "--quick", "--costs-out", "--model"):
        assert option in result.output
