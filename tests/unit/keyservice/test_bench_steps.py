"""The benchmark's in-process step timing runs (it broke once when the bodies became typed)
and times a revocation poll beside a release's steps."""

from __future__ import annotations

from pathlib import Path

from sealserve.bench._keyservice_steps import CLIENT_STEPS, SERVER_STEPS, measure_steps
from sealserve.bench.keyservice import KeyServiceBenchConfig


def test_the_step_timing_covers_every_step_and_a_poll(tmp_path: Path) -> None:
    steps = measure_steps(tmp_path, count=5)
    assert list(steps["server"]) == list(SERVER_STEPS)
    assert list(steps["client"]) == list(CLIENT_STEPS)
    assert list(steps["poll"]) == ["answer_poll"]


def test_the_quick_config_is_short() -> None:
    quick = KeyServiceBenchConfig.quick()
    assert quick.requests_per_round < KeyServiceBenchConfig().requests_per_round
    assert not quick.kinds
    assert quick.unloaded == 0
