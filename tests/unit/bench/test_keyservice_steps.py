"""The in-process step timing of a key release runs every step and names each one."""

from __future__ import annotations

from pathlib import Path

from sealserve.bench._keyservice_steps import measure_steps


def test_every_step_of_a_release_is_timed(tmp_path: Path) -> None:
    steps = measure_steps(tmp_path, count=2)
    assert set(steps) == {"server", "client", "poll"}
    assert "issue_challenge" in steps["server"]
    assert "parse_challenge" in steps["client"]
    assert all(us >= 0 for side in steps.values() for us in side.values())
