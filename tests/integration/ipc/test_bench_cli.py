"""``sealserve bench ipc`` end to end: a tiny run writes the JSON and the plot; bad input is
one line and a non-zero exit, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealserve", "bench", "ipc", *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_a_tiny_run_writes_results_goals_and_a_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "ipc.json", tmp_path / "ipc.png"
    done = _bench(
        "--quick",
        "--repeats", "1",
        "--sizes", "64,256K",
        "--transports", "sealserve-loan-latency,sealserve-copy-efficiency,sealserve-auto-latency",
        "--json", str(out),
        "--plot", str(png),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["failures"] == {}
    assert doc["elapsed_s"] > 0  # the whole run, workers included (--quick: under 60 s)
    assert f"elapsed: {doc['elapsed_s']:.1f} s" in done.stdout
    rows = {(r["transport"], r["size_bytes"]): r for r in doc["results"]}
    assert set(rows) == {
        (t, s)
        for t in (
            "baseline",
            "sealserve-copy-efficiency",
            "sealserve-loan-latency",
            "sealserve-auto-latency",
        )
        for s in (64, 256 << 10)
    }
    for row in rows.values():
        for key in ("p50_us", "p99_us", "gb_per_s", "msgs_per_s", "cpu_s_per_gb"):
            assert row[key] is not None
            assert row[key] > 0
    assert rows[("baseline", 64)]["ratio_gb_per_s"] == 1.0
    goals = {g["goal"] for g in doc["goals"]}
    assert {
        "p50 vs baseline, latency hint",
        "throughput vs baseline",
        "loans: throughput vs baseline",
        "loans: CPU s/GB vs baseline",
    } <= goals
    # auto says, per size, which path its scheduler chose and why (at 256 KiB two can carry
    # a send_async of the latency hint: inline and the offload engine, plus pipelining).
    auto = {a["size_bytes"]: a for a in doc["auto"] if a["transport"] == "sealserve-auto-latency"}
    assert set(auto) == {64, 256 << 10}
    assert auto[64]["learned"] == []
    assert auto[256 << 10]["learned"]
    assert {c["regime"] for c in auto[256 << 10]["learned"]} <= {"streaming", "one at a time"}
    assert all(
        c["chosen"] in ("inline", "pipelined", "offload") for c in auto[256 << 10]["learned"]
    )
    assert "auto: the path the scheduler chose" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "goals" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sizes", "12X"), "not a size"),
        (("--sizes", "100"), "multiples of 64"),
        (("--transports", "carrier-pigeon"), "no transport matches carrier-pigeon"),
        (("--repeats", "0"), "repeats must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    done = _bench(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_the_options() -> None:
    done = _bench("--help")
    assert done.returncode == 0
    for option in ("--quick", "--json", "--plot", "--sizes", "--transports", "--gap-us"):
        assert option in done.stdout
