"""Trace CSV parsing (with errors that say where), writing, and the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealserve.packer import Trace, TraceRequest, parse_trace_csv, read_trace_csv, write_trace_csv


def parse(text: str) -> Trace:
    return parse_trace_csv(text.splitlines(keepends=True), source="t.csv")


def test_rows_are_read_and_sorted_by_time() -> None:
    trace = parse("timestamp_s,model,duration_ms\n2.5,b,\n0,a,12.5\n\n1,a,\n")
    assert trace.requests == (
        TraceRequest(0.0, "a", 0.0125),
        TraceRequest(1.0, "a", None),
        TraceRequest(2.5, "b", None),
    )
    assert trace.models == ("a", "b")
    assert trace.duration_s == 2.5


def test_columns_may_come_in_any_order_and_duration_is_optional() -> None:
    trace = parse(" model , timestamp_s\nx,3\n")
    assert trace.requests == (TraceRequest(3.0, "x"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "t.csv: empty; expected a header line"),
        ("timestamp_s,model\n", "t.csv: has a header but no requests"),
        ("timestamp_s\n1\n", "t.csv line 1: missing the column 'model'"),
        ("timestamp_s,model,user\n", "t.csv line 1: unknown column 'user'"),
        ("model,model,timestamp_s\n", "t.csv line 1: column 'model' appears twice"),
        ("timestamp_s,model\n1,a\nabc,b\n", "t.csv line 3, column 'timestamp_s': value 'abc' is"),
        ("timestamp_s,model\n-1,a\n", "t.csv line 2, column 'timestamp_s': value '-1' is negative"),
        ("timestamp_s,model\ninf,a\n", "line 2, column 'timestamp_s': value 'inf' is not finite"),
        ("timestamp_s,model\n1, \n", "t.csv line 2, column 'model': the model name is empty"),
        ("timestamp_s,model\n1,a,2\n", "t.csv line 2: expected 2 fields"),
        ("timestamp_s,model,duration_ms\n1,a,0\n", "column 'duration_ms': value '0' must be > 0"),
        ("timestamp_s,model,duration_ms\n1,a,x\n", "column 'duration_ms': value 'x' is not a"),
    ],
)
def test_errors_name_the_line_the_column_and_the_value(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_files_round_trip(tmp_path: Path) -> None:
    trace = Trace(
        (TraceRequest(0.25, "a", 0.01), TraceRequest(1.0 / 3.0, "b"), TraceRequest(7.0, "a")),
        name="x",
    )
    path = tmp_path / "trace.csv"
    text = write_trace_csv(trace, path)
    assert text.splitlines()[0] == "timestamp_s,model,duration_ms"
    again = read_trace_csv(path)
    assert [(r.arrival_s, r.model) for r in again.requests] == [
        (r.arrival_s, r.model) for r in trace.requests
    ]
    assert again.requests[0].duration_s == pytest.approx(0.01)
    assert again.requests[1].duration_s is None


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_trace_csv(tmp_path / "missing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_trace_csv(binary)
    with pytest.raises(ValueError, match=f"trace file '{tmp_path}' cannot be read: Is a dir"):
        read_trace_csv(tmp_path)


def test_summary_reports_size_skew_and_burstiness() -> None:
    rows = [TraceRequest(float(i), "hot") for i in range(10)] + [TraceRequest(3.5, "cold")]
    summary = Trace(tuple(rows), name="s").summary()
    assert summary["requests"] == 11
    assert summary["models"] == 2
    assert summary["requests_per_model"] == {"hot": 10, "cold": 1}
    assert summary["top_20pct_models_share"] == pytest.approx(10 / 11, abs=1e-4)
    assert summary["median_interarrival_cv"] == 0.0  # "hot" is perfectly regular


def test_an_empty_trace_is_refused() -> None:
    with pytest.raises(ValueError, match="has no requests"):
        Trace((), name="empty")
