"""Synthetic traces shaped like public serverless traces.

The shape follows the characterisations of Azure Functions (Shahrad et al., "Serverless in
the Wild", USENIX ATC '20, on the 2019 trace; Zhang et al., SOSP '21, on the 2021 trace):

* popularity is heavy-tailed: a few functions take most invocations and most are invoked
  rarely (in 2019, 81% of applications were invoked at most once a minute on average, and the
  rates spanned eight orders of magnitude).  Here the mean rates fall as a power of the
  popularity rank (Zipf-like), from ``top_rate_per_s`` for the most popular model to
  ``tail_rate_per_s`` for the least; with the defaults and 20 models, 7 are invoked more than
  once a minute and 13 less;
* arrivals are bursty, not Poisson (most functions' inter-arrival times have a coefficient of
  variation above 1).  Each model follows a two-state Markov-modulated Poisson process.  A
  model whose mean rate is below ``burst_rate_per_s`` is ON/OFF: bursts at that rate lasting
  ``mean_burst_s`` on average (exponential), separated by OFF periods with a heavy-tailed
  (log-normal) length whose mean makes the model's mean rate come out right.  A more popular
  model always has traffic, and spends a fraction ``peak_fraction`` of its time in burst
  periods at ``peak_factor`` times its mean rate (slower in between, so the mean holds);
* there is no diurnal cycle (traces are an hour by default).

The models are named ``model-01`` (most popular) to ``model-NN``; their costs come from the
cost model's stable name hash, like any model not in the zoo.  The same seed gives the same
trace, on every machine.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sealserve.packer._trace import Trace, TraceRequest

__all__ = ["SyntheticConfig", "synthetic_trace"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """The parameters of :func:`synthetic_trace` (the defaults are documented above)."""

    models: int = 20
    duration_s: float = 3600.0
    top_rate_per_s: float = 2.0
    tail_rate_per_s: float = 1.0 / 600.0
    burst_rate_per_s: float = 0.5
    mean_burst_s: float = 20.0
    off_sigma: float = 1.0
    peak_fraction: float = 0.2
    peak_factor: float = 3.0

    def __post_init__(self) -> None:
        if isinstance(self.models, bool) or not isinstance(self.models, int) or self.models < 1:
            raise ValueError(f"models must be an int >= 1, got {self.models!r}")
        for name in (
            "duration_s",
            "top_rate_per_s",
            "tail_rate_per_s",
            "burst_rate_per_s",
            "mean_burst_s",
            "peak_factor",
        ):
            value = getattr(self, name)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.tail_rate_per_s > self.top_rate_per_s:
            raise ValueError(
                f"tail_rate_per_s must be <= top_rate_per_s ({self.top_rate_per_s!r}), "
                f"got {self.tail_rate_per_s!r}"
            )
        if not self.off_sigma >= 0:
            raise ValueError(f"off_sigma must be >= 0, got {self.off_sigma!r}")
        if not 0 < self.peak_fraction < 1:
            raise ValueError(f"peak_fraction must be within (0, 1), got {self.peak_fraction!r}")
        if self.peak_factor * self.peak_fraction > 1:
            raise ValueError(
                "peak_factor x peak_fraction must be <= 1 so the quiet rate stays >= 0, "
                f"got {self.peak_factor!r} x {self.peak_fraction!r}"
            )

    def mean_rates(self) -> list[float]:
        """Each model's mean rate (requests per second), most popular first."""
        n = self.models
        if n == 1:
            return [self.top_rate_per_s]
        exponent = math.log(self.top_rate_per_s / self.tail_rate_per_s) / math.log(n)
        return [self.top_rate_per_s * (rank**-exponent) for rank in range(1, n + 1)]

    @property
    def zipf_exponent(self) -> float:
        if self.models == 1:
            return 0.0
        return math.log(self.top_rate_per_s / self.tail_rate_per_s) / math.log(self.models)


def synthetic_trace(seed: int, config: SyntheticConfig | None = None) -> Trace:
    """A trace for ``seed``: deterministic, heavy-tailed popularity, bursty arrivals."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    cfg = config or SyntheticConfig()
    width = max(2, len(str(cfg.models)))
    requests: list[TraceRequest] = []
    for index, rate in enumerate(cfg.mean_rates()):
        rng = np.random.default_rng([seed, index])
        name = f"model-{index + 1:0{width}d}"
        if rate < cfg.burst_rate_per_s:
            times = _on_off(rng, cfg, rate)
        else:
            times = _modulated(rng, cfg, rate)
        requests.extend(TraceRequest(round(t, 6), name) for t in times)
    return Trace(tuple(requests), name=f"synthetic-{seed}")


def _poisson(rng: np.random.Generator, rate: float, start: float, end: float) -> list[float]:
    if rate <= 0 or end <= start:
        return []
    count = int(rng.poisson(rate * (end - start)))
    return sorted(float(t) for t in rng.uniform(start, end, size=count))


def _on_off(rng: np.random.Generator, cfg: SyntheticConfig, rate: float) -> list[float]:
    duty = rate / cfg.burst_rate_per_s
    mean_off = cfg.mean_burst_s * (1.0 - duty) / duty
    sigma = cfg.off_sigma
    mu = math.log(mean_off) - sigma * sigma / 2.0
    times: list[float] = []
    on = bool(rng.random() < duty)
    t = 0.0
    # The first period is a residual: start inside a period, not at its beginning.
    first = True
    while t < cfg.duration_s:
        if on:
            length = float(rng.exponential(cfg.mean_burst_s))
            end = min(t + length, cfg.duration_s)
            times.extend(_poisson(rng, cfg.burst_rate_per_s, t, end))
        else:
            length = float(rng.lognormal(mu, sigma)) if sigma > 0 else mean_off
            if first:
                length *= float(rng.random())
        t += length
        on = not on
        first = False
    return times


def _modulated(rng: np.random.Generator, cfg: SyntheticConfig, rate: float) -> list[float]:
    peak = rate * cfg.peak_factor
    quiet = rate * (1.0 - cfg.peak_factor * cfg.peak_fraction) / (1.0 - cfg.peak_fraction)
    mean_quiet = cfg.mean_burst_s * (1.0 - cfg.peak_fraction) / cfg.peak_fraction
    times: list[float] = []
    in_peak = bool(rng.random() < cfg.peak_fraction)
    t = 0.0
    while t < cfg.duration_s:
        mean = cfg.mean_burst_s if in_peak else mean_quiet
        end = min(t + float(rng.exponential(mean)), cfg.duration_s)
        times.extend(_poisson(rng, peak if in_peak else quiet, t, end))
        t = end
        in_peak = not in_peak
    return times
