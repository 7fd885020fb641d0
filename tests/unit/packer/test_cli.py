"""``sealserve bench packer`` through the CLI, with a saved cost model (nothing measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.bench import packer as bench_packer
from sealserve.cli import app
from sealserve.config import RUNTIME_RESERVE_MB, PlatformSettings
from sealserve.packer import POLICY_NAMES, CostModel

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_machine_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    # environment() asks the platform module, which may spawn `uname`; unit tests spawn nothing.
    monkeypatch.setattr(bench_packer, "environment", lambda: {"python": "test"})


@pytest.fixture
def costs_file(costs: CostModel, tmp_path: Path) -> Path:
    return costs.save(tmp_path / "costs.json")


def bench(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["bench", "packer", *args])
    return result.exit_code, result.output


def test_a_synthetic_run_writes_every_policy(costs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    saved = tmp_path / "trace.csv"
    code, output = bench(
        "--synthetic", "1", "--models", "6", "--duration-s", "300", "--repeats", "2",
        "--costs", str(costs_file), "--json", str(out), "--save-trace", str(saved),
    )  # fmt: skip
    assert code == 0, output
    assert "FnPacker policies" in output
    report = json.loads(out.read_text())
    assert list(report["policies"]) == list(POLICY_NAMES)
    for entry in report["policies"].values():
        for key in ("p50_ms", "p99_ms", "cold_starts", "model_loads", "gb_s"):
            assert isinstance(entry[key], int | float)
        assert len(entry["repeats"]) == 2
    assert report["policies"]["dedicated"]["ratio_to_dedicated"]["gb_s"] == 1.0
    fitted = report["policies"]["dedicated-fitted"]
    assert fitted["ratio_to_dedicated_fitted"]["gb_s"] == 1.0
    assert fitted["ratio_to_dedicated"]["gb_s"] < 1.0  # every function sized for its model
    assert fitted["ratio_to_dedicated"]["p99"] == 1.0  # the same instances, the same latency
    # the packed instances: the live platform's default memory and sizes, each keeping the
    # live platform's reserve for the host and the runtime (not the cost model's runtime alone)
    platform = PlatformSettings()
    assert report["platform"]["instance_memory_mb"] == platform.instance_memory_mb
    assert report["platform"]["budget_mb"] == platform.instance_memory_mb - RUNTIME_RESERVE_MB
    assert report["platform"]["shapes"] == [
        {"memory_mb": size, "budget_mb": size - RUNTIME_RESERVE_MB}
        for size in sorted({*platform.sizes_mb, platform.instance_memory_mb})
    ]
    reference = report["reference"]
    ideal = reference["ideal_packing_ratio_to_dedicated"]
    assert 0 < ideal < reference["ideal_packing_ratio_to_dedicated_fitted"] < 1
    # in the shapes, packing cannot do better than with fluid memory
    assert reference["ideal_shaped_exact"] is True
    assert reference["ideal_packing_gb_s"] <= reference["ideal_shaped_gb_s"]
    assert ideal <= reference["ideal_shaped_ratio_to_dedicated"] < 1
    assert report["simulation"]["seeds"] == [0, 1]
    assert report["trace"]["models"] <= 6
    assert report["costs"]["schema"] == "sealserve.packer.costs/1"
    assert {g["goal"] for g in report["goals"]} >= {"sealserve p99 <= 1.2 x dedicated"}
    assert saved.read_text().startswith("timestamp_s,model")


def test_a_trace_file_runs_the_chosen_policies(costs_file: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,model,duration_ms\n0,small,\n0.5,mine,30\n90,small,\n")
    out = tmp_path / "r.json"
    code, output = bench(
        "--trace", str(trace), "--policies", "dedicated,sealserve", "--repeats", "1",
        "--costs", str(costs_file), "--json", str(out),
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(out.read_text())
    assert list(report["policies"]) == ["dedicated", "sealserve"]
    assert report["trace"]["requests"] == 3
    assert report["trace"]["zoo_model_of"]["mine"] in {"small", "medium", "large"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --trace FILE.csv or --synthetic SEED"),
        (("--synthetic", "1"), "give --json PATH"),
        (("--synthetic", "1", "--trace", "x.csv", "--json", "o"), "not both"),
        (("--synthetic", "1", "--json", "o", "--policies", "best"), "unknown policy ['best']"),
        (
            (
                "--synthetic",
                "1",
                "--json",
                "o",
                "--instance-memory-mb",
                "512",
                "--budget-mb",
                "600",
            ),
            "--budget-mb 600 leaves no room for the runtime in --instance-memory-mb 512",
        ),
        (
            ("--synthetic", "1", "--json", "o", "--sizes-mb", "512,1g"),
            "--sizes-mb: '1g' is not a whole number of MB",
        ),
    ],
)
def test_bad_invocations_get_one_clear_line(args: tuple[str, ...], message: str) -> None:
    code, output = bench(*args)
    assert code == 2
    assert message in output
    assert "Traceback" not in output


def test_a_bad_trace_says_where(costs_file: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,model\n0,a\nsoon,b\n")
    code, output = bench("--trace", str(trace), "--costs", str(costs_file), "--json", "o.json")
    assert code == 2
    assert "line 3, column 'timestamp_s': value 'soon' is not a number" in output


def test_a_directory_as_the_trace_gets_one_line(costs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    code, output = bench("--trace", str(tmp_path), "--costs", str(costs_file), "--json", str(out))
    assert code == 2
    assert output.strip() == f"Error: trace file '{tmp_path}' cannot be read: Is a directory"
    assert not out.exists()


@pytest.mark.parametrize("option", ["--json", "--save-trace"])
@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("a-file/o.out", "Not a directory: {a_file}"),  # its folder would be a regular file
        ("a-dir", "Is a directory"),
    ],
)
def test_an_unwritable_output_is_refused_before_simulating(
    costs_file: Path, tmp_path: Path, option: str, where: str, reason: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "a-dir").mkdir()
    bad = tmp_path / where
    paths = {"--json": str(tmp_path / "r.json"), "--save-trace": str(tmp_path / "t.csv")}
    paths[option] = str(bad)
    code, output = bench(
        "--synthetic", "1", "--models", "3", "--duration-s", "60", "--repeats", "1",
        "--costs", str(costs_file), *(arg for pair in paths.items() for arg in pair),
    )  # fmt: skip
    assert code == 1
    reason = reason.format(a_file=repr(str(tmp_path / "a-file")))
    assert output.strip() == f"Error: {option} {bad}: cannot write there: {reason}"
    assert "FnPacker policies" not in output  # refused before simulating
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "a-file", "costs.json"]
    assert list((tmp_path / "a-dir").iterdir()) == []


def test_a_missing_cost_model_is_reported(tmp_path: Path) -> None:
    code, output = bench(
        "--synthetic", "1", "--costs", str(tmp_path / "none.json"), "--json", "o.json"
    )
    assert code == 1
    assert "does not exist" in output


def test_the_packed_instance_can_be_sized(costs_file: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,model\n0,small\n1,medium\n")
    out = tmp_path / "r.json"
    code, output = bench(
        "--trace", str(trace), "--policies", "dedicated,sesemi", "--repeats", "1",
        "--instance-memory-mb", "1024", "--reserve-mb", "100", "--sizes-mb", "512",
        "--costs", str(costs_file), "--json", str(out),
    )  # fmt: skip
    assert code == 0, output
    platform = json.loads(out.read_text())["platform"]
    assert (platform["instance_memory_mb"], platform["budget_mb"]) == (1024, 924.0)
    assert platform["dedicated_memory_mb"] == 1024
    assert platform["dedicated_fitted_memory_mb"] == {"small": 256, "medium": 512}
    # sealserve's sizes: 512 MB beside the packed instance, each keeping the same reserve for
    # the host and the runtime
    assert platform["shapes"] == [
        {"memory_mb": 512, "budget_mb": 412.0},
        {"memory_mb": 1024, "budget_mb": 924.0},
    ]


def test_sealserve_may_start_the_sizes_given(costs_file: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,model\n0,small\n0.1,large\n")
    out = tmp_path / "r.json"
    code, output = bench(
        "--trace", str(trace), "--policies", "dedicated,sealserve", "--repeats", "1",
        "--sizes-mb", "256, 1024,", "--reserve-mb", "100",
        "--costs", str(costs_file), "--json", str(out),
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(out.read_text())
    assert [s["memory_mb"] for s in report["platform"]["shapes"]] == [256, 1024, 2048]
    # small in a 256 MB instance, large in a 1,024 MB one, each alive 181 s or so
    sealserve = report["policies"]["sealserve"]
    assert sealserve["cold_starts"] == 2
    assert 1280 / 1024 * 181 < sealserve["gb_s"] < 1280 / 1024 * 185


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--instance-memory-mb", "256"), "--instance-memory-mb 256 leaves no room for models"),
        (
            ("--instance-memory-mb", "512", "--budget-mb", "450", "--reserve-mb", "100"),
            "--budget-mb 450 does not fit in --instance-memory-mb 512 beside the reserve for "
            "the host and the runtime (100 MB)",
        ),
        (("--sizes-mb", "100", "--reserve-mb", "100"), "larger than the runtime reserve of 100 MB"),
        (("--sizes-mb", "384"), f"larger than the runtime reserve of {RUNTIME_RESERVE_MB} MB"),
    ],
)
def test_a_packed_instance_without_room_for_the_runtime_is_refused(
    costs_file: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, output = bench(
        "--synthetic", "1", "--duration-s", "10", "--costs", str(costs_file),
        "--json", str(tmp_path / "o.json"), *args,
    )  # fmt: skip
    assert code == 2
    assert message in output
