"""Synthetic traces: deterministic per seed, heavy-tailed popularity, bursty arrivals."""

from __future__ import annotations

import itertools
import math

import pytest

from sealserve.packer import SyntheticConfig, synthetic_trace


def test_the_same_seed_gives_the_same_trace() -> None:
    cfg = SyntheticConfig(duration_s=600.0)
    assert synthetic_trace(3, cfg) == synthetic_trace(3, cfg)
    assert synthetic_trace(3, cfg) != synthetic_trace(4, cfg)


def test_a_known_seed_gives_known_figures() -> None:
    # Pins the generator: a change to it shows here (and in the benchmark's figures).
    trace = synthetic_trace(1, SyntheticConfig(duration_s=600.0))
    assert len(trace) == 1314
    assert trace.requests[0].model == "model-01"
    assert trace.models[:3] == ("model-01", "model-02", "model-03")


def test_popularity_is_heavy_tailed() -> None:
    cfg = SyntheticConfig()
    rates = cfg.mean_rates()
    assert rates[0] == cfg.top_rate_per_s
    assert rates[-1] == pytest.approx(cfg.tail_rate_per_s)
    assert all(a > b for a, b in itertools.pairwise(rates))
    per_minute = 1 / 60
    assert sum(r > per_minute for r in rates) == 7  # 13 of 20 models: at most once a minute
    summary = synthetic_trace(1).summary()
    assert summary["top_20pct_models_share"] > 0.9


def test_arrivals_are_bursty() -> None:
    summary = synthetic_trace(1).summary()
    assert summary["median_interarrival_cv"] > 1.5  # Poisson would be 1


def test_mean_rates_come_out_as_configured() -> None:
    cfg = SyntheticConfig(models=3, duration_s=20_000.0, tail_rate_per_s=0.05)
    trace = synthetic_trace(0, cfg)
    counts = trace.summary()["requests_per_model"]
    for rate, name in zip(cfg.mean_rates(), ("model-01", "model-02", "model-03"), strict=True):
        expected = rate * cfg.duration_s
        assert math.isclose(counts[name], expected, rel_tol=0.25)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"models": 0}, "models must be an int >= 1, got 0"),
        ({"duration_s": 0.0}, "duration_s must be a finite number > 0"),
        ({"tail_rate_per_s": 5.0}, "tail_rate_per_s must be <= top_rate_per_s"),
        ({"peak_fraction": 1.0}, "peak_fraction must be within"),
        ({"peak_factor": 6.0}, "peak_factor x peak_fraction must be <= 1"),
    ],
)
def test_config_names_the_bad_argument(kw: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kw)  # type: ignore[arg-type]


def test_seed_must_be_a_natural_number() -> None:
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        synthetic_trace(-1)
