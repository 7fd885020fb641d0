"""The pure parts of the fault and soak benchmarks: what a fault's window counts, when the load
recovered, and whether a process stayed flat."""

from __future__ import annotations

from sealserve.bench._load import Record, summarize
from sealserve.bench.soak import _verdict


def ok(t: float) -> Record:
    return Record(sent=t - 0.05, done=t, outcome="ok", attempts=1, model_id="m")


def test_a_fault_window_counts_outcomes_and_the_recovery_comes_after_the_last_failure() -> None:
    before = [ok(t / 10) for t in range(0, 30)]  # 10/s for 3 s before the fault at 3.0
    failed = [Record(3.5, 4.0, "retryable", 3, "m", "PlatformError")]
    gap = [ok(4.2)]  # one success, but not half the rate yet
    back = [ok(6.0 + t / 10) for t in range(0, 30)]
    records = before + failed + gap + back
    summary = summarize(records, since=3.0, until=9.0)
    assert (summary["ok"], summary["retryable"], summary["failed"], summary["lost"]) == (
        31,
        1,
        0,
        0,
    )
    assert summary["rate_before_per_s"] == 10.0
    assert summary["recovery_s"] is not None
    assert 2.9 <= summary["recovery_s"] <= 3.1  # from the fault to 6.0, when 5/s came back
    assert summary["errors"] == {"PlatformError": 1}
    assert summary["retried"] == 1


def test_a_load_that_never_came_back_has_no_recovery() -> None:
    records = [ok(t / 10) for t in range(0, 30)] + [Record(3.1, 3.2, "lost", 1, "m", "no answer")]
    summary = summarize(records, since=3.0, until=8.0)
    assert summary["recovery_s"] is None
    assert summary["lost"] == 1


def sample(t: float, rss: float, fds: int, pid: int = 7) -> dict[str, object]:
    return {"t": t, "processes": {"gateway": {"pid": pid, "rss_mb": rss, "fds": fds}}, "shm": 0}


def test_flat_and_growing_processes() -> None:
    flat = [sample(t, 100.0 + (t % 3), 20) for t in range(0, 300, 10)]
    assert _verdict(flat, warmup_s=60)["gateway"]["flat"]
    growing = [sample(t, 100.0 + t / 10, 20) for t in range(0, 300, 10)]
    assert not _verdict(growing, warmup_s=60)["gateway"]["flat"]
    leaking = [sample(t, 100.0, 20 + t // 30) for t in range(0, 300, 10)]
    assert not _verdict(leaking, warmup_s=60)["gateway"]["flat"]
    replaced = flat[:15] + [sample(t, 100.0, 20, pid=8) for t in range(150, 300, 10)]
    assert "gateway" not in _verdict(replaced, warmup_s=60)  # not the same process throughout
