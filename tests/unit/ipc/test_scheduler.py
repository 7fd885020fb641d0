"""The per-message scheduler: decisions by hint, size, occupancy and engine load; adaptation."""

from __future__ import annotations

import pytest

from sealserve.ipc import Notify, NotifyReason, Path, QoS, Reason, Scheduler

KIB = 1 << 10
MIB = 1 << 20


def _scheduler(**kwargs: object) -> Scheduler:
    s = Scheduler(cache_bytes=4 * MIB, **kwargs)  # type: ignore[arg-type]
    s.register_engine("thread", asynchronous=True, fixed_s=20e-6, bytes_per_s=6e9)
    return s


def test_small_messages_are_copied_inline_whatever_the_hint() -> None:
    s = _scheduler()
    for qos in QoS:
        d = s.decide(nbytes=4 * KIB, qos=qos, asynchronous=True)
        assert d.path is Path.INLINE
        assert d.reason is Reason.SMALL


def test_payloads_in_the_arena_are_loans() -> None:
    d = _scheduler().decide(nbytes=64 * MIB, qos=QoS.LATENCY, in_arena=True)
    assert (d.path, d.reason) == (Path.LOAN, Reason.IN_ARENA)


def test_latency_pipelines_large_messages_with_cache_sized_chunks() -> None:
    s = _scheduler()
    d = s.decide(nbytes=16 * MIB, qos=QoS.LATENCY)
    assert d.path is Path.PIPELINED
    assert d.engine == "inline"  # synchronous send: the caller copies chunk by chunk
    assert d.chunk_bytes == 1 * MIB  # a quarter of the 4 MiB cache
    assert s.decide(nbytes=1 * MIB, qos=QoS.LATENCY).chunk_bytes == 128 * KIB
    asynchronous = s.decide(nbytes=16 * MIB, qos=QoS.LATENCY, asynchronous=True)
    assert (asynchronous.path, asynchronous.engine) == (Path.PIPELINED, "thread")


def test_throughput_offloads_asynchronous_sends_when_the_engine_keeps_up() -> None:
    s = _scheduler()
    d = s.decide(nbytes=4 * MIB, qos=QoS.THROUGHPUT, asynchronous=True, backlog={"thread": 0})
    assert (d.path, d.engine, d.reason) == (Path.OFFLOAD, "thread", Reason.OFFLOAD_PAYS)
    synchronous = s.decide(nbytes=4 * MIB, qos=QoS.THROUGHPUT)
    assert synchronous.path is Path.PIPELINED  # nothing to gain from handing off and waiting


def test_a_backlogged_engine_is_not_given_more() -> None:
    s = _scheduler()
    d = s.decide(
        nbytes=1 * MIB, qos=QoS.THROUGHPUT, asynchronous=True, backlog={"thread": 512 * MIB}
    )
    assert d.path is not Path.OFFLOAD


def test_efficiency_always_copies_inline() -> None:
    d = _scheduler().decide(nbytes=64 * MIB, qos=QoS.EFFICIENCY, asynchronous=True)
    assert (d.path, d.reason) == (Path.INLINE, Reason.EFFICIENCY)


def test_a_nearly_full_ring_is_not_pipelined() -> None:
    s = _scheduler()
    d = s.decide(nbytes=16 * MIB, qos=QoS.LATENCY, occupancy=0.9)
    assert (d.path, d.reason) == (Path.INLINE, Reason.OCCUPANCY_HIGH)
    offloaded = s.decide(nbytes=16 * MIB, qos=QoS.LATENCY, occupancy=0.9, asynchronous=True)
    assert offloaded.path is Path.OFFLOAD


def test_thresholds_adapt_to_measured_costs() -> None:
    s = _scheduler()
    before = s.pipeline_min_bytes
    assert before is not None
    for _ in range(40):  # publishing a chunk turns out to be expensive on this machine
        s.observe_chunk(40e-6)
    after = s.pipeline_min_bytes
    assert after is not None
    assert after > before
    assert s.decide(nbytes=before * 2, qos=QoS.LATENCY).path is Path.INLINE
    off_before = s.offload_min_bytes("thread")
    for _ in range(40):  # and the helper thread is slow to pick work up
        s.observe_copy("thread", nbytes=1 * MIB, seconds=200e-6, queued_s=1e-3)
    off_after = s.offload_min_bytes("thread")
    assert off_before is not None
    assert off_after is not None
    assert off_after > off_before


def test_copy_bandwidth_is_learned_from_large_copies_only() -> None:
    s = _scheduler()
    for _ in range(50):
        s.observe_copy("inline", nbytes=8 * MIB, seconds=8 * MIB / 2e9)
    assert s.inline.bytes_per_s == pytest.approx(2e9, rel=0.05)
    s.observe_copy("inline", nbytes=100, seconds=0.0)  # a clock that did not move
    s.observe_copy("nonexistent", nbytes=8 * MIB, seconds=1.0)
    assert s.inline.bytes_per_s == pytest.approx(2e9, rel=0.05)


def test_force_pins_a_path_and_says_so() -> None:
    s = _scheduler(force=Path.OFFLOAD)
    d = s.decide(nbytes=64, qos=QoS.EFFICIENCY)
    assert (d.path, d.engine, d.reason) == (Path.OFFLOAD, "thread", Reason.FORCED)
    assert s.small_bytes == 0
    assert s.snapshot()["force"] == "offload"
    pinned = Scheduler(force=Path.PIPELINED).decide(nbytes=1 * MIB, qos=QoS.EFFICIENCY)
    assert (pinned.path, pinned.engine) == (Path.PIPELINED, "inline")
    no_engine = Scheduler(force=Path.OFFLOAD).decide(nbytes=64, qos=QoS.LATENCY)
    assert no_engine.path is Path.INLINE


def test_snapshot_explains_model_thresholds_and_decisions() -> None:
    s = _scheduler()
    s.decide(nbytes=16 * MIB, qos=QoS.LATENCY)
    s.decide(nbytes=100, qos=QoS.LATENCY)
    snap = s.snapshot()
    assert snap["decisions"] == {"pipelined": 1, "inline": 1}
    assert snap["model"]["thread"]["kind"] == "thread"
    assert snap["thresholds"]["pipelined_from_bytes"] == s.pipeline_min_bytes
    assert snap["thresholds"]["chunk_bytes_range"] == [64 * KIB, 1 * MIB]
    assert snap["recent"][-1]["why"] == Reason.PIPELINING_PAYS.value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_bytes": 100}, "cache_bytes"),
        ({"min_chunk_bytes": 1000}, "min_chunk_bytes"),
        ({"high_occupancy": 0}, "high_occupancy"),
        ({"offload_gain": 0.5}, "offload_gain"),
        ({"alpha": 2}, "alpha"),
        ({"inline_bytes_per_s": 0}, "inline_bytes_per_s"),
        ({"force": "inline"}, "force"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        Scheduler(**kwargs)  # type: ignore[arg-type]


def test_engines_register_once_with_a_known_kind() -> None:
    s = _scheduler()
    with pytest.raises(ValueError, match="already registered"):
        s.register_engine("thread", asynchronous=True)
    with pytest.raises(ValueError, match="already registered"):
        s.register_engine("inline", asynchronous=False)
    with pytest.raises(ValueError, match="kind"):
        s.register_engine("gpu", asynchronous=True, kind="magic")
    s.register_engine("dsa", asynchronous=True, kind="device", fixed_s=2e-6, bytes_per_s=30e9)
    d = s.decide(nbytes=8 * MIB, qos=QoS.THROUGHPUT, asynchronous=True)
    assert d.engine == "dsa"  # a device engine is preferred over a helper thread


def test_when_chunks_cost_more_than_they_save_nothing_is_pipelined() -> None:
    s = _scheduler()
    for _ in range(60):
        s.observe_chunk(1e-3)  # a millisecond per chunk: never worth it
    assert s.pipeline_min_bytes is None
    assert s.decide(nbytes=256 * MIB, qos=QoS.LATENCY).path is Path.INLINE


@pytest.mark.parametrize(
    ("qos", "notify", "why"),
    [
        (QoS.LATENCY, Notify.WAKE, NotifyReason.LATENCY),
        (QoS.EFFICIENCY, Notify.WAKE, NotifyReason.EFFICIENCY),
        (QoS.THROUGHPUT, Notify.BATCH, NotifyReason.THROUGHPUT),
    ],
)
def test_the_notification_policy_follows_the_hint_on_every_path(
    qos: QoS, notify: Notify, why: NotifyReason
) -> None:
    s = _scheduler()
    decisions = [
        s.decide(nbytes=100, qos=qos),
        s.decide(nbytes=16 * MIB, qos=qos),
        s.decide(nbytes=16 * MIB, qos=qos, asynchronous=True),
        s.decide(nbytes=16 * MIB, qos=qos, in_arena=True),
        _scheduler(force=Path.OFFLOAD).decide(nbytes=100, qos=qos),
        _scheduler(force=Path.INLINE).decide(nbytes=100, qos=qos),
    ]
    assert {(d.notify, d.notify_reason) for d in decisions} == {(notify, why)}
    assert s.notify_for(qos) is notify
    assert s.notify_counts[notify] == 5


def test_a_nearly_full_ring_batches_wake_ups_whatever_the_hint() -> None:
    s = _scheduler()
    for qos in QoS:
        for d in (
            s.decide(nbytes=100, qos=qos, occupancy=0.8),
            s.decide(nbytes=16 * MIB, qos=qos, occupancy=0.9),
        ):
            assert (d.notify, d.notify_reason) == (Notify.BATCH, NotifyReason.OCCUPANCY_HIGH)
        assert s.notify_for(qos, 0.75) is Notify.BATCH
        below = s.decide(nbytes=100, qos=qos, occupancy=0.5)
        assert below.notify_reason is not NotifyReason.OCCUPANCY_HIGH


def test_small_and_loan_decisions_are_shared_not_allocated_per_message() -> None:
    s = _scheduler()
    for qos in QoS:
        assert s.decide(nbytes=64, qos=qos) is s.decide(nbytes=64, qos=qos)
        assert s.decide(nbytes=64, qos=qos, in_arena=True) is s.decide(
            nbytes=64, qos=qos, in_arena=True
        )
    assert s.decide(nbytes=64, qos=QoS.LATENCY) is not s.decide(nbytes=64, qos=QoS.THROUGHPUT)


def test_snapshot_explains_the_notification_policy() -> None:
    s = _scheduler()
    s.decide(nbytes=16 * MIB, qos=QoS.THROUGHPUT)
    s.decide(nbytes=100, qos=QoS.LATENCY)
    s.notify_for(QoS.THROUGHPUT)
    snap = s.snapshot()["notify"]
    assert snap["decisions"] == {"batch": 2, "wake": 1}
    assert snap["policy"]["throughput"] == f"batch: {NotifyReason.THROUGHPUT.value}"
    assert snap["policy"]["latency (ring nearly full)"].startswith("batch: ")
    assert snap["policy"]["efficiency"].startswith("wake: ")
    recent = s.snapshot()["recent"][-1]
    assert (recent["notify"], recent["notify_why"]) == ("batch", NotifyReason.THROUGHPUT.value)
