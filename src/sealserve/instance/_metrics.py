"""Prometheus series of the instance host (one registry per host).

::

    sealserve_instance_requests_total{endpoint, code}     answers by endpoint and error code
                                                          (``ok`` for success)
    sealserve_instance_stage_seconds{stage}               per-request stage timings (histogram;
                                                          the stage names of runtime.timings)
    sealserve_instance_cold_start_seconds{stage}          the last cold start, by stage
    sealserve_instance_in_flight                          requests being served now
    sealserve_instance_runtime_restarts_total             runtimes restarted after a crash
    sealserve_instance_runtime_up                         1 when a runtime is ready
    sealserve_runtime_models_resident                     models in the runtime's cache
    sealserve_runtime_model_bytes                         bytes charged to the memory budget
    sealserve_runtime_memory_budget_bytes                 the budget
    sealserve_runtime_resident_set_bytes                  the runtime process's RSS
    sealserve_runtime_model_loads_total                   loads (cache misses)
    sealserve_runtime_model_evictions_total               evictions
    sealserve_runtime_key_releases_total                  key releases kept in the key cache

The ``sealserve_runtime_*`` series are read from the runtime (its ``stats`` ecall) when the
registry is scraped; they say nothing a host may not know.  The ipc data plane adds its own
``sealserve_ipc_*`` series to the same registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["InstanceMetrics"]

_STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _LiveCollector:
    """Series read at scrape time: the supervisor's state and the runtime's stats."""

    def __init__(
        self,
        stats: Callable[[], Mapping[str, Any] | None],
        restarts: Callable[[], int],
        runtime_up: Callable[[], bool],
    ) -> None:
        self._stats = stats
        self._restarts = restarts
        self._up = runtime_up

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "sealserve_instance_runtime_restarts",
            "Runtimes restarted after they crashed.",
            value=float(self._restarts()),
        )
        yield GaugeMetricFamily(
            "sealserve_instance_runtime_up",
            "1 when a runtime is ready.",
            value=1.0 if self._up() else 0.0,
        )
        stats = self._stats()
        if not stats:
            return
        models = stats.get("models", {})
        keys = stats.get("keys", {})
        yield GaugeMetricFamily(
            "sealserve_runtime_models_resident",
            "Models in the runtime's cache.",
            value=len(models.get("models", [])),
        )
        yield GaugeMetricFamily(
            "sealserve_runtime_model_bytes",
            "Bytes of the memory budget charged to resident models.",
            value=float(models.get("used_bytes", 0)),
        )
        yield GaugeMetricFamily(
            "sealserve_runtime_memory_budget_bytes",
            "The runtime's memory budget for models.",
            value=float(models.get("budget_bytes", 0)),
        )
        yield GaugeMetricFamily(
            "sealserve_runtime_resident_set_bytes",
            "Resident set of the runtime process.",
            value=float(stats.get("rss_bytes", 0)),
        )
        yield CounterMetricFamily(
            "sealserve_runtime_model_loads",
            "Model loads (cache misses) of the current runtime.",
            value=float(models.get("loads", 0)),
        )
        yield CounterMetricFamily(
            "sealserve_runtime_model_evictions",
            "Model evictions of the current runtime.",
            value=float(models.get("evictions", 0)),
        )
        yield CounterMetricFamily(
            "sealserve_runtime_key_releases",
            "Key releases kept in the current runtime's key cache.",
            value=float(keys.get("releases", 0)),
        )


class InstanceMetrics:
    """The host's series on ``registry`` (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        runtime_stats: Callable[[], Mapping[str, Any] | None],
        restarts: Callable[[], int],
        runtime_up: Callable[[], bool],
    ) -> None:
        self.registry = registry
        self.requests = Counter(
            "sealserve_instance_requests",
            "Answers of the instance host by endpoint and code.",
            ["endpoint", "code"],
            registry=registry,
        )
        self.stages = Histogram(
            "sealserve_instance_stage_seconds",
            "Per-request stage timings.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.cold_start = Gauge(
            "sealserve_instance_cold_start_seconds",
            "Stages of the last cold start.",
            ["stage"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "sealserve_instance_in_flight", "Requests being served now.", registry=registry
        )
        registry.register(_LiveCollector(runtime_stats, restarts, runtime_up))

    def observe(self, endpoint: str, code: str, timings_ms: Mapping[str, float]) -> None:
        self.requests.labels(endpoint=endpoint, code=code).inc()
        for stage, ms in timings_ms.items():
            self.stages.labels(stage=stage).observe(ms / 1000.0)

    def record_cold_start(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.cold_start.labels(stage=stage).set(ms / 1000.0)
