"""``sealserve bench serve``'s pure parts: hey's CSV, process roles, summaries and goals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sealserve.bench import _serve_stack as stack
from sealserve.bench.serve import (
    ServeBenchConfig,
    _requests_for,
    _summarize,
    goals,
    update_costs,
)
from sealserve.packer import CostModel, ModelCosts

CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
0.0100,0.0001,0.0000,0.0002,0.0095,0.0001,200,0.0000
0.0200,0.0000,0.0000,0.0002,0.0190,0.0001,200,0.0100
0.0300,0.0000,0.0000,0.0002,0.0290,0.0001,503,0.0300
"""


def test_hey_csv_gives_latencies_of_good_answers_and_the_throughput_over_the_span() -> None:
    run = stack.parse_hey_csv(CSV, requests=3, concurrency=1)
    assert run.latencies_ms == pytest.approx([10.0, 20.0])
    assert run.statuses == {"200": 2, "503": 1}
    assert run.errors == 1
    assert run.wall_s == pytest.approx(0.06)
    assert run.throughput == pytest.approx(2 / 0.06)


def test_a_missing_load_generator_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install hey"):
        stack.find_load_generator()


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("/venv/bin/python -m sealserve up --data-dir /d", "gateway"),
        ("/venv/bin/python -m sealserve attest platform serve --socket s", "tee daemon"),
        ("/venv/bin/python -m sealserve instance serve --store s", "host"),
        ("python -I -B -c import sys;... /snap sealserve.runtime._main --threads 2", "runtime"),
        ("python -I -B -c import sys;... /snap sealserve.keyservice._main", "keyservice"),
        ("python -m sealserve.bench._plain_server --model m.onnx", "plain"),
        ("sleep 10", "other"),
    ],
)
def test_processes_are_named_by_their_role(cmdline: str, role: str) -> None:
    assert stack.role_of(cmdline) == role


def _run(throughput: float, p50: float, cpu: float) -> dict[str, object]:
    by_process = {"gateway": cpu / 4, "runtime": cpu}
    return {"throughput": throughput, "p50_ms": p50, "p99_ms": 2 * p50, "errors": 0,
            "cpu_ms_per_request": cpu, "cpu_ms_by_process": by_process}  # fmt: skip


def test_summaries_are_medians_and_ratios_are_sealed_over_plain() -> None:
    sealed = [_run(90, 11, 11), _run(80, 12, 12), _run(100, 10, 10)]
    plain = [_run(100, 10, 10)] * 3
    s = _summarize(sealed, plain)
    assert s["sealed"]["throughput"] == 90
    assert s["throughput_ratio"] == pytest.approx(0.9)
    assert s["p50_ratio"] == pytest.approx(1.1)
    assert s["cpu_ratio"] == pytest.approx(1.1)
    assert s["round_throughput_ratios"] == [0.9, 0.8, 1.0]
    assert s["sealed"]["cpu_ms_by_process"] == {"gateway": 2.75, "runtime": 11.0}


def test_goals_follow_the_issue() -> None:
    good = _summarize([_run(95, 10.5, 10.5)], [_run(100, 10, 10)])
    bad = _summarize([_run(80, 13, 13)], [_run(100, 10, 10)])
    results = {
        "warm": {
            "mobilenet-v2": {"by_concurrency": {"1": good, "4": bad}},
            "resnet-50": {"by_concurrency": {"1": good}},
        },
        "cold": {
            "mobilenet-v2": {"no_instance": {"total_p50_ms": 450.0, "stages_p50_ms": {}}},
            "resnet-50": {"no_instance": {"total_p50_ms": 1300.0, "stages_p50_ms": {
                "model_fetch": 200.0, "model_unseal_session": 700.0, "inference": 60.0}}},
        },
    }  # fmt: skip
    by_name = {g["goal"]: g["met"] for g in goals(results)}
    assert by_name["mobilenet-v2 c=1 throughput sealed/plain >= 0.9"]
    assert by_name["mobilenet-v2 c=1 p50 sealed/plain <= 1.15"]
    assert not by_name["mobilenet-v2 c=4 throughput sealed/plain >= 0.9"]
    assert by_name["resnet-50 c=1 p50 sealed/plain <= 1.05"]  # on the line is met
    assert by_name["resnet-50 c=1 throughput sealed/plain >= 0.95"]
    assert by_name["mobilenet-v2 c=1 CPU per request sealed/plain <= 1.15"]
    assert not by_name["mobilenet-v2 c=4 CPU per request sealed/plain <= 1.15"]
    assert by_name["mobilenet-v2 cold start p50 ms <= 500"]
    assert not by_name["resnet-50 cold start p50 ms (own load + 200 ms) <= 1160"]


def test_run_sizes_follow_the_latency_and_the_options_are_checked() -> None:
    assert _requests_for(10.0, 1, 4.0) == 400
    assert _requests_for(100.0, 8, 1.0) == 80
    assert _requests_for(0.01, 1, 100.0) == 3000
    with pytest.raises(ValueError, match="rounds"):
        ServeBenchConfig(rounds=0)
    with pytest.raises(ValueError, match="concurrency"):
        ServeBenchConfig(concurrency=(0,))


def test_the_measured_cold_start_replaces_the_cost_model_s(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    CostModel(
        cold_start_s=2.0,
        runtime_base_mb=80.0,
        models={"m": ModelCosts(load_s=0.2, infer_s=0.02, memory_mb=100.0)},
        methods={"load_ms": "kept"},
    ).save(path)
    cold = {
        name: {"no_instance": {"stages_p50_ms": {"cold_start": ms}}}
        for name, ms in (("a", 300.0), ("b", 500.0), ("c", 400.0))
    }
    results = {"cold": {**cold, "platform_meters": {}}}
    assert update_costs(path, results) == 400.0
    model = CostModel.load(path)
    assert model.cold_start_s == pytest.approx(0.4)
    assert model.methods["load_ms"] == "kept"
    assert "template" in model.methods["cold_start_ms"]
    with pytest.raises(ValueError, match="no cold start"):
        update_costs(path, {"cold": {"platform_meters": {}}})
