"""Prometheus series, read from live endpoints at scrape time, in a registry of our own."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from sealserve.ipc import Channel, ChannelOptions, IPCMetrics, Path, Scheduler, ThreadEngine


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_series_follow_the_channel_and_stop_when_it_closes() -> None:
    registry = CollectorRegistry()
    opts = ChannelOptions(capacity=8, arena_bytes=1 << 20, memory="anonymous")
    with (
        ThreadEngine() as engine,
        Channel.create(opts, name="frames", registry=registry) as ch,
    ):
        pub = ch.publisher(scheduler=Scheduler(force=Path.OFFLOAD), engines=[engine])
        sub = ch.subscriber()
        pub.send_async(np.zeros(1000, np.uint8).tobytes())
        pub.flush(timeout=5)
        with pub.loan(24) as loan:
            loan.view[:] = bytes(24)
        for _ in range(2):
            s = sub.receive(timeout=1.0)
            assert s is not None
            s.release()
        labels = {"channel": "frames", "role": "publisher"}
        assert _value(registry, "sealserve_ipc_messages_total", path="offload", **labels) == 1
        assert _value(registry, "sealserve_ipc_bytes_total", path="offload", **labels) == 1000
        assert _value(registry, "sealserve_ipc_messages_total", path="loan", **labels) == 1
        assert (
            _value(
                registry,
                "sealserve_ipc_messages_total",
                channel="frames",
                role="subscriber",
                path="received",
            )
            == 2
        )
        assert (
            _value(
                registry, "sealserve_ipc_offload_seconds_count", channel="frames", engine="thread"
            )
            == 1
        )
        notified = {"channel": "frames", "policy": "wake"}  # latency: wake; nobody asleep
        assert (
            _value(registry, "sealserve_ipc_notifications_total", outcome="none-needed", **notified)
            == 2
        )
        assert (
            _value(registry, "sealserve_ipc_notifications_total", outcome="woken", **notified)
            is None
        )
        occupancy = _value(registry, "sealserve_ipc_ring_occupancy", channel="frames")
        assert occupancy is not None
        assert 0 <= occupancy <= 1
        text = generate_latest(registry).decode()
        for name in (
            "sealserve_ipc_wakeups_total",
            "sealserve_ipc_spin_hits_total",
            "sealserve_ipc_spin_misses_total",
            "sealserve_ipc_arena_bytes_in_use",
            "sealserve_ipc_reclaimed_slots_total",
        ):
            assert name in text
    assert _value(registry, "sealserve_ipc_messages_total", path="loan", **labels) is None


def test_one_collector_per_registry() -> None:
    registry = CollectorRegistry()
    assert IPCMetrics.for_registry(registry) is IPCMetrics.for_registry(registry)
    assert IPCMetrics.for_registry(registry) is not IPCMetrics.for_registry(CollectorRegistry())
