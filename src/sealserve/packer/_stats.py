"""Load statistics a policy learns from what it observes: arrival rates and measured costs.

Rates are exponentially decayed counts (a request ``age`` seconds ago weighs
``exp(-age / window)``), so a model's rate rises within a burst and fades after it, with no
fixed buckets.  Whether a model will be requested again soon is read from its own recent
inter-arrival times, as the hybrid histogram policy of "Serverless in the Wild" (ATC '20) does
for keep-alive: given that it has been idle for ``t``, the chance of a request within ``h`` is
the share of its past gaps longer than ``t`` that ended by ``t + h``.  Bursty models (short gaps
within bursts, long gaps between them) are judged by their long gaps once a burst is over,
which a Poisson rate would not do.

Durations are exponentially weighted moving averages that start from a prior (the measured
cost model, when the caller has one) and follow what the instances report.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

__all__ = ["DecayedRate", "Ewma", "LoadStats", "ModelStats"]


class Ewma:
    """An exponentially weighted moving average that starts from a prior."""

    __slots__ = ("alpha", "samples", "value")

    def __init__(self, prior: float, *, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be within (0, 1], got {alpha!r}")
        if not prior >= 0 or math.isinf(prior):
            raise ValueError(f"prior must be a finite number >= 0, got {prior!r}")
        self.alpha = alpha
        self.value = float(prior)
        self.samples = 0

    def observe(self, sample: float) -> None:
        if not sample >= 0 or math.isinf(sample):
            raise ValueError(f"sample must be a finite number >= 0, got {sample!r}")
        self.value += self.alpha * (sample - self.value)
        self.samples += 1


class DecayedRate:
    """Events per second, each event's weight decaying with time constant ``window_s``."""

    __slots__ = ("_at", "_score", "window_s")

    def __init__(self, *, window_s: float) -> None:
        if not window_s > 0 or math.isinf(window_s):
            raise ValueError(f"window_s must be a finite number > 0, got {window_s!r}")
        self.window_s = window_s
        self._score = 0.0
        self._at = 0.0

    def observe(self, now: float) -> None:
        self._score = self._decayed(now) + 1.0
        self._at = max(now, self._at)

    def rate(self, now: float) -> float:
        return self._decayed(now) / self.window_s

    def _decayed(self, now: float) -> float:
        if self._score == 0.0:
            return 0.0
        return self._score * math.exp(-max(0.0, now - self._at) / self.window_s)


class ModelStats:
    """What a policy knows of one model: its arrival rates and its measured costs."""

    __slots__ = (
        "exec_s",
        "gaps",
        "last_arrival",
        "last_done",
        "load_s",
        "long_rate",
        "short_rate",
    )

    #: Gaps kept per model, and how many are needed before they are trusted.
    GAPS = 64
    MIN_GAPS = 4

    def __init__(
        self, *, exec_s: float, load_s: float, short_window_s: float, long_window_s: float
    ) -> None:
        self.exec_s = Ewma(exec_s)
        self.load_s = Ewma(load_s)
        self.short_rate = DecayedRate(window_s=short_window_s)
        self.long_rate = DecayedRate(window_s=long_window_s)
        self.last_arrival: float | None = None
        self.last_done: float | None = None
        self.gaps: collections.deque[float] = collections.deque(maxlen=self.GAPS)

    def arrived(self, now: float) -> None:
        self.short_rate.observe(now)
        self.long_rate.observe(now)
        if self.last_arrival is not None:
            self.gaps.append(max(0.0, now - self.last_arrival))
        self.last_arrival = now

    def chance_within(self, horizon_s: float, now: float) -> float:
        """The chance of a request within ``horizon_s`` from ``now`` (see the module docs).

        With fewer than :attr:`MIN_GAPS` gaps, or none as long as the current idle time, it
        falls back to a Poisson process at :meth:`rate`.
        """
        if self.last_arrival is None:
            return 0.0
        idle = max(0.0, now - self.last_arrival)
        longer = [g for g in self.gaps if g > idle]
        if len(self.gaps) < self.MIN_GAPS or not longer:
            return 1.0 - math.exp(-self.rate(now) * horizon_s)
        ended = sum(1 for g in longer if g <= idle + horizon_s)
        return ended / (len(longer) + 1)

    def rate(self, now: float) -> float:
        """The larger of the short- and long-window rates: quick to rise, slow to forget."""
        return max(self.short_rate.rate(now), self.long_rate.rate(now))


class LoadStats:
    """Per-model statistics plus the measured cold start, with priors for unseen models."""

    def __init__(
        self,
        *,
        prior_exec_s: Callable[[str], float],
        prior_load_s: Callable[[str], float],
        prior_cold_start_s: float,
        short_window_s: float = 30.0,
        long_window_s: float = 600.0,
    ) -> None:
        if not 0 < short_window_s <= long_window_s:
            raise ValueError(
                f"short_window_s must be within (0, long_window_s={long_window_s!r}], "
                f"got {short_window_s!r}"
            )
        self._prior_exec = prior_exec_s
        self._prior_load = prior_load_s
        self.short_window_s = short_window_s
        self.long_window_s = long_window_s
        self.cold_start_s = Ewma(prior_cold_start_s)
        self._models: dict[str, ModelStats] = {}

    def peek(self, name: str) -> ModelStats:
        """``name``'s statistics, or fresh ones from the priors, without recording the model
        (what a pure decision reads; do not update what it returns)."""
        stats = self._models.get(name)
        if stats is not None:
            return stats
        return ModelStats(
            exec_s=self._prior_exec(name),
            load_s=self._prior_load(name),
            short_window_s=self.short_window_s,
            long_window_s=self.long_window_s,
        )

    def model(self, name: str) -> ModelStats:
        """``name``'s statistics, created from the priors on first use (to update them)."""
        stats = self._models.get(name)
        if stats is None:
            stats = ModelStats(
                exec_s=self._prior_exec(name),
                load_s=self._prior_load(name),
                short_window_s=self.short_window_s,
                long_window_s=self.long_window_s,
            )
            self._models[name] = stats
        return stats

    def known(self) -> tuple[str, ...]:
        return tuple(self._models)
