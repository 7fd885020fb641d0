"""Issue 6's simulator goals, on ``--synthetic 1`` with 20 models and the committed cost model.

The simulation is deterministic (a seeded trace, seeded cost sampling, the cost model the
sealed runtime measured and benchmarks/results/costs.json holds), so this checks the packer's
decisions, not this machine's speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COSTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "costs.json"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("packer") / "packer.json"
    result = CliRunner().invoke(
        app,
        ["bench", "packer", "--synthetic", "1", "--models", "20",
         "--costs", str(COSTS), "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def _median(report: dict[str, object], policy: str, figure: str) -> float:
    policies = report["policies"]
    assert isinstance(policies, dict)
    return float(policies[policy][figure])


@pytest.mark.parametrize("policy", ["sesemi", "sealserve"])
def test_packing_halves_gb_seconds_at_a_p99_within_1_2x_dedicated(
    report: dict[str, object], policy: str
) -> None:
    gb_s = _median(report, policy, "gb_s") / _median(report, "dedicated", "gb_s")
    p99 = _median(report, policy, "p99_ms") / _median(report, "dedicated", "p99_ms")
    assert gb_s <= 0.5, f"{policy}: {gb_s:.3f} x dedicated's GB-s"
    assert p99 <= 1.2, f"{policy}: p99 {p99:.3f} x dedicated's"


@pytest.mark.parametrize("other", ["lru-multiplex", "sesemi"])
def test_sealserve_switches_less_than(report: dict[str, object], other: str) -> None:
    ours = _median(report, "sealserve", "switches")
    theirs = _median(report, other, "switches")
    assert ours < theirs, f"sealserve {ours:g} cold starts + loads, {other} {theirs:g}"


def test_the_report_says_every_goal_is_met(report: dict[str, object]) -> None:
    goals = report["goals"]
    assert isinstance(goals, list)
    assert len(goals) == 6
    assert [g["goal"] for g in goals if not g["met"]] == []
    synthetic = report["synthetic"]
    assert isinstance(synthetic, dict)
    assert synthetic["models"] == 20


@pytest.fixture(scope="module")
def spares_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("packer") / "packer-spares.json"
    result = CliRunner().invoke(
        app,
        ["bench", "packer", "--synthetic", "1", "--models", "20", "--spares", "1",
         "--costs", str(COSTS), "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def test_with_spares_their_cost_is_billed_and_sealserve_keeps_its_goals(
    spares_report: dict[str, object],
) -> None:
    """Issue 15: spares (billed from their start) given to every policy, dedicated included
    (they help it most: its cold starts are many); sealserve still halves dedicated's GB-s
    within 1.2x its p99 and switches least."""
    policies = spares_report["policies"]
    assert isinstance(policies, dict)
    for figures in policies.values():
        assert 0 <= figures["spare_gb_s"] <= figures["gb_s"]
    assert policies["dedicated"]["spare_gb_s"] > 0
    gb_s = _median(spares_report, "sealserve", "gb_s") / _median(spares_report, "dedicated", "gb_s")
    p99 = _median(spares_report, "sealserve", "p99_ms") / _median(
        spares_report, "dedicated", "p99_ms"
    )
    assert gb_s <= 0.5, f"sealserve with spares: {gb_s:.3f} x dedicated's GB-s"
    assert p99 <= 1.2, f"sealserve with spares: p99 {p99:.3f} x dedicated's"
    ours = _median(spares_report, "sealserve", "switches")
    for other in ("lru-multiplex", "sesemi"):
        assert ours < _median(spares_report, other, "switches")
