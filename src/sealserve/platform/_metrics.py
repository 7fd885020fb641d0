"""The platform's Prometheus series (docs/operating.md, "The local platform").

Counters and gauges are read from the platform's stats at scrape time (one source of truth);
the durations the driver measures are histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sealserve.platform._stats import PlatformStats

__all__ = ["PlatformMetrics"]

_MIB = 1 << 20
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_COUNTERS = (
    ("cold_starts", "Instances started (cold starts)."),
    ("failed_starts", "Instances that did not start."),
    ("model_loads", "Models loaded into a runtime (by the router, or again after a restart)."),
    ("failed_loads", "Model loads that failed."),
    ("evictions", "Models evicted to make room for a load."),
    ("scaled_to_zero", "Instances stopped after their keep-alive."),
    ("instances_replaced", "Instances stopped because they failed or were unhealthy."),
    ("rerouted", "Requests routed again because their instance failed before they ran."),
    ("runtime_failures", "Requests whose runtime died under them."),
)


class _StatsCollector(Collector):
    def __init__(self, stats: Callable[[], PlatformStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        states = GaugeMetricFamily(
            "sealserve_platform_instances", "Instances alive, by state.", labels=["state"]
        )
        for state in ("starting", "idle", "busy"):
            count = sum(1 for i in stats.instances if i.state == state)
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily(
            "sealserve_platform_waiting", "Requests held at the router.", value=stats.waiting
        )
        memory = GaugeMetricFamily(
            "sealserve_platform_memory_bytes",
            "Memory of the alive instances: their sizes (configured, as billed), their "
            "runtimes' model budgets (budget), and what they used when last measured "
            "(resident: the host and the runtime, shared memory once).",
            labels=["kind"],
        )
        measured = [i.resident_mb for i in stats.instances if i.resident_mb is not None]
        for kind, mb in (
            ("configured", sum(i.memory_mb for i in stats.instances)),
            ("budget", sum(i.budget_mb for i in stats.instances)),
            ("resident", sum(measured)),
        ):
            memory.add_metric([kind], mb * _MIB)
        yield memory
        yield GaugeMetricFamily(
            "sealserve_platform_instances_over_memory",
            "Alive instances that used more than their size when last measured.",
            value=sum(
                1
                for i in stats.instances
                if i.resident_mb is not None and i.resident_mb > i.memory_mb
            ),
        )
        yield GaugeMetricFamily(
            "sealserve_platform_in_flight",
            "Requests submitted and not finished.",
            value=stats.in_flight,
        )
        yield CounterMetricFamily(
            "sealserve_platform_gb_seconds",
            "Billed GB-seconds: every instance's configured memory x time alive.",
            value=stats.gb_seconds,
        )
        yield CounterMetricFamily(
            "sealserve_platform_spare_gb_seconds",
            "The part of the billed GB-seconds spent on instances kept ready (spares).",
            value=stats.spare_gb_seconds,
        )
        yield CounterMetricFamily(
            "sealserve_platform_instance_seconds",
            "Seconds instances were alive, summed.",
            value=stats.instance_seconds,
        )
        for name, help_text in _COUNTERS:
            yield CounterMetricFamily(
                f"sealserve_platform_{name}", help_text, value=stats.counters.get(name, 0)
            )
        requests = CounterMetricFamily(
            "sealserve_platform_requests",
            "Requests by outcome: served, failed (by the instance or the platform), rejected "
            "(no capacity).",
            labels=["outcome"],
        )
        for outcome in ("served", "failed", "rejected"):
            requests.add_metric([outcome], stats.counters.get(outcome, 0))
        yield requests
        decisions = CounterMetricFamily(
            "sealserve_platform_decisions",
            "Routing decisions by kind (run, start, wait).",
            labels=["kind", "policy"],
        )
        for kind, count in stats.decisions.items():
            decisions.add_metric([kind, stats.policy], count)
        yield decisions


class PlatformMetrics:
    """The platform's series in ``registry``."""

    def __init__(self, registry: CollectorRegistry, stats: Callable[[], PlatformStats]) -> None:
        registry.register(_StatsCollector(stats))
        self.cold_start = Histogram(
            "sealserve_platform_cold_start_seconds",
            "Instance start to ready (spawn, host, runtime launch).",
            registry=registry,
            buckets=_SECONDS,
        )
        self.model_load = Histogram(
            "sealserve_platform_model_load_seconds",
            "A model load as the router waited for it (keys, fetch, unseal, session).",
            registry=registry,
            buckets=_SECONDS,
        )
        self.queue = Histogram(
            "sealserve_platform_queue_seconds",
            "A request's time at the platform before it was sent to an instance.",
            registry=registry,
            buckets=_SECONDS,
        )
