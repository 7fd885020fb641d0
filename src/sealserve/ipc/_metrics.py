"""Prometheus series of the data plane.

The hot path only bumps plain integers (:class:`~sealserve.ipc._stats.Counters`); this
collector reads them from every live publisher and subscriber when the registry is scraped,
so a message costs no metric lock.  Series (labels in braces)::

    sealserve_ipc_messages_total{channel, role, path}       messages by path
    sealserve_ipc_bytes_total{channel, role, path}          payload bytes by path
    sealserve_ipc_offload_seconds{channel, engine}          submit -> copy landed (histogram)
    sealserve_ipc_wakeups_total{channel, role, direction}   futex wake-ups sent / received
    sealserve_ipc_notifications_total{channel, policy, outcome}
                                                            publications by notification
                                                            policy (wake, batch) and outcome
                                                            (woken, coalesced, none-needed)
    sealserve_ipc_spin_hits_total{channel, role}            waits that ended while spinning
    sealserve_ipc_spin_misses_total{channel, role}          spins that gave up and blocked
    sealserve_ipc_ring_occupancy{channel}                   descriptors in flight / capacity
    sealserve_ipc_arena_bytes_in_use{channel}               arena bytes held by messages
    sealserve_ipc_reclaimed_slots_total{channel, reason}    messages reclaimed from
                                                            subscribers that died or left

Roles are ``publisher`` and ``subscriber``; a subscriber counts what it received under
``path="received"``.  Endpoints with the same channel name are summed.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sealserve.ipc._stats import (
    NOTIFY_OUTCOMES,
    NOTIFY_POLICIES,
    OFFLOAD_BUCKETS_S,
    ChannelStats,
    Counters,
)

__all__ = ["IPCMetrics"]


class _Endpoint(Protocol):
    name: str

    @property
    def counters(self) -> Counters: ...

    def stats(self) -> ChannelStats: ...


_Key = tuple[str, ...]


class IPCMetrics:
    """The collector of one registry; get it with :meth:`for_registry`."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, IPCMetrics] = (
        weakref.WeakKeyDictionary()
    )
    _registry_lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self._endpoints: weakref.WeakSet[_Endpoint] = weakref.WeakSet()
        self._lock = threading.Lock()
        registry.register(self)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> IPCMetrics:
        """The collector registered in ``registry`` (the global one by default)."""
        target = REGISTRY if registry is None else registry
        with cls._registry_lock:
            found = cls._by_registry.get(target)
            if found is None:
                found = cls._by_registry[target] = cls(target)
            return found

    def track(self, endpoint: _Endpoint) -> None:
        with self._lock:
            self._endpoints.add(endpoint)

    def untrack(self, endpoint: _Endpoint) -> None:
        with self._lock:
            self._endpoints.discard(endpoint)

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            endpoints = list(self._endpoints)
        messages: dict[_Key, float] = collections.defaultdict(float)
        nbytes: dict[_Key, float] = collections.defaultdict(float)
        wakeups: dict[_Key, float] = collections.defaultdict(float)
        notified: dict[_Key, float] = collections.defaultdict(float)
        hits: dict[_Key, float] = collections.defaultdict(float)
        misses: dict[_Key, float] = collections.defaultdict(float)
        reclaimed: dict[_Key, float] = collections.defaultdict(float)
        occupancy: dict[_Key, float] = {}
        in_use: dict[_Key, float] = collections.defaultdict(float)
        offload: dict[_Key, tuple[list[int], float]] = {}
        for ep in endpoints:
            c = ep.counters
            stats = ep.stats()
            role = stats.role
            for path, pair in list(c.paths.items()):
                messages[(ep.name, role, path)] += pair[0]
                nbytes[(ep.name, role, path)] += pair[1]
            wakeups[(ep.name, role, "sent")] += c.wakeups_sent
            wakeups[(ep.name, role, "received")] += c.waits.wakeups_received
            hits[(ep.name, role)] += c.waits.spin_hits
            misses[(ep.name, role)] += c.waits.spin_misses
            for reason, count in list(c.reclaimed.items()):
                reclaimed[(ep.name, reason)] += count
            if role == "publisher":
                flat = list(c.notified)
                for p, policy in enumerate(NOTIFY_POLICIES):
                    for o, outcome in enumerate(NOTIFY_OUTCOMES):
                        if flat[p * 3 + o]:
                            notified[(ep.name, policy, outcome)] += flat[p * 3 + o]
                occupancy[(ep.name,)] = stats.occupancy
                in_use[(ep.name,)] += stats.arena_bytes_in_use
            for engine, buckets in list(c.offload_buckets.items()):
                key = (ep.name, engine)
                old_buckets, old_sum = offload.get(key, ([0] * len(buckets), 0.0))
                offload[key] = (
                    [a + b for a, b in zip(old_buckets, buckets, strict=True)],
                    old_sum + c.offload_sum_s.get(engine, 0.0),
                )
        yield from self._families(
            messages, nbytes, wakeups, hits, misses, reclaimed, occupancy, in_use, offload, notified
        )

    @staticmethod
    def _families(
        messages: dict[_Key, float] | None = None,
        nbytes: dict[_Key, float] | None = None,
        wakeups: dict[_Key, float] | None = None,
        hits: dict[_Key, float] | None = None,
        misses: dict[_Key, float] | None = None,
        reclaimed: dict[_Key, float] | None = None,
        occupancy: dict[_Key, float] | None = None,
        in_use: dict[_Key, float] | None = None,
        offload: dict[_Key, tuple[list[int], float]] | None = None,
        notified: dict[_Key, float] | None = None,
    ) -> Iterator[Metric]:
        def counter(
            name: str, doc: str, labels: list[str], values: dict[_Key, float] | None
        ) -> Metric:
            fam = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted((values or {}).items()):
                fam.add_metric(list(key), value)
            return fam

        def gauge(
            name: str, doc: str, labels: list[str], values: dict[_Key, float] | None
        ) -> Metric:
            fam = GaugeMetricFamily(name, doc, labels=labels)
            for key, value in sorted((values or {}).items()):
                fam.add_metric(list(key), value)
            return fam

        yield counter(
            "sealserve_ipc_messages", "Messages by path.", ["channel", "role", "path"], messages
        )
        yield counter(
            "sealserve_ipc_bytes", "Payload bytes by path.", ["channel", "role", "path"], nbytes
        )
        hist = HistogramMetricFamily(
            "sealserve_ipc_offload_seconds",
            "Time from submitting a copy to an engine to the copy landing.",
            labels=["channel", "engine"],
        )
        for key, (buckets, total) in sorted((offload or {}).items()):
            cumulative: list[tuple[str, float]] = []
            running = 0
            for bound, count in zip((*OFFLOAD_BUCKETS_S, float("inf")), buckets, strict=True):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            hist.add_metric(list(key), cumulative, total)
        yield hist
        yield counter(
            "sealserve_ipc_wakeups",
            "Futex wake-ups sent to and received from the peer.",
            ["channel", "role", "direction"],
            wakeups,
        )
        yield counter(
            "sealserve_ipc_notifications",
            "Publications by notification policy and what the notification did.",
            ["channel", "policy", "outcome"],
            notified,
        )
        yield counter(
            "sealserve_ipc_spin_hits", "Waits that ended while spinning.", ["channel", "role"], hits
        )
        yield counter(
            "sealserve_ipc_spin_misses",
            "Spins that gave up and blocked.",
            ["channel", "role"],
            misses,
        )
        yield gauge(
            "sealserve_ipc_ring_occupancy",
            "Descriptors in flight over ring capacity.",
            ["channel"],
            occupancy,
        )
        yield gauge(
            "sealserve_ipc_arena_bytes_in_use",
            "Arena bytes held by messages not yet reclaimed.",
            ["channel"],
            in_use,
        )
        yield counter(
            "sealserve_ipc_reclaimed_slots",
            "Messages reclaimed from subscribers that died or left.",
            ["channel", "reason"],
            reclaimed,
        )
