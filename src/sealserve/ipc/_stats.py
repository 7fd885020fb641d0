"""What one end of a channel did, as plain counters (hot path) and as a snapshot (``stats()``).

The hot path only increments integers here; :meth:`Counters.snapshot` and the Prometheus
collector (:mod:`sealserve.ipc._metrics`) read them when asked.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

from sealserve.ipc._notify import WaitCounters

__all__ = [
    "NOTIFY_OUTCOMES",
    "NOTIFY_POLICIES",
    "OFFLOAD_BUCKETS_S",
    "ChannelReport",
    "ChannelStats",
    "Counters",
    "notify_summary",
    "offload_summary",
    "snapshot",
]

#: ``Counters.notified[policy * 3 + outcome]``: what each publication's notification did.
NOTIFY_POLICIES = ("wake", "batch")
NOTIFY_OUTCOMES = ("woken", "coalesced", "none-needed")

#: Upper bounds (seconds) of the offload-latency histogram buckets.
OFFLOAD_BUCKETS_S = (
    25e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    0.1,
    0.25,
    1.0,
)


class Counters:
    """Counters of one publisher or subscriber."""

    __slots__ = (
        "notified",
        "offload_buckets",
        "offload_count",
        "offload_sum_s",
        "paths",
        "reclaimed",
        "waits",
        "wakeups_sent",
    )

    def __init__(self) -> None:
        #: path -> [messages, bytes]; the hot path keeps a reference to its own pair.
        self.paths: dict[str, list[int]] = {}
        self.waits = WaitCounters()
        self.wakeups_sent = 0
        #: Publications by notification policy and outcome (``NOTIFY_POLICIES`` x
        #: ``NOTIFY_OUTCOMES``, flattened); a publisher shares its ring's list.
        self.notified = [0] * 6
        self.reclaimed: dict[str, int] = {}
        self.offload_buckets: dict[str, list[int]] = {}
        self.offload_sum_s: dict[str, float] = {}
        self.offload_count: dict[str, int] = {}

    def path(self, name: str) -> list[int]:
        """The ``[messages, bytes]`` pair of one path, created on first use."""
        pair = self.paths.get(name)
        if pair is None:
            pair = self.paths[name] = [0, 0]
        return pair

    def count(self, path: str, nbytes: int) -> None:
        pair = self.path(path)
        pair[0] += 1
        pair[1] += nbytes

    def by_path(self) -> dict[str, dict[str, int]]:
        return {
            name: {"messages": pair[0], "bytes": pair[1]}
            for name, pair in list(self.paths.items())
            if pair[0]
        }

    def count_reclaimed(self, reason: str, slots: int) -> None:
        self.reclaimed[reason] = self.reclaimed.get(reason, 0) + slots

    def observe_offload(self, engine: str, seconds: float) -> None:
        buckets = self.offload_buckets.get(engine)
        if buckets is None:
            buckets = self.offload_buckets[engine] = [0] * (len(OFFLOAD_BUCKETS_S) + 1)
            self.offload_sum_s[engine] = 0.0
            self.offload_count[engine] = 0
        buckets[bisect.bisect_left(OFFLOAD_BUCKETS_S, seconds)] += 1
        self.offload_sum_s[engine] += seconds
        self.offload_count[engine] += 1


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """A snapshot of one end of a channel, with the scheduler's reasoning for a publisher."""

    channel: str
    role: str
    state: str
    messages: int
    bytes: int
    by_path: dict[str, dict[str, int]]
    wakeups_sent: int
    wakeups_received: int
    notify: dict[str, dict[str, int]]
    spin_hits: int
    spin_misses: int
    blocks: int
    timeouts: int
    spin_budget_us: float
    wake_cost_us: float
    in_flight: int
    capacity: int
    arena_bytes_in_use: int
    arena_bytes: int
    reclaimed_slots: dict[str, int]
    offload: dict[str, dict[str, float]]
    scheduler: dict[str, Any] | None = None
    #: Spins that found the peer last seen on this end's CPU, and so yielded at every turn.
    spins_on_shared_cpu: int = 0
    #: Waits left that block without spinning: spinning kept missing and backs off.
    spin_backoff: int = 0

    @property
    def occupancy(self) -> float:
        """Descriptors in flight over the ring's capacity."""
        return self.in_flight / self.capacity if self.capacity else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["occupancy"] = self.occupancy
        return out


@dataclasses.dataclass(frozen=True)
class ChannelReport:
    """Every end of one channel made in this process: ``Channel.stats()``.

    The publisher's stats carry the scheduler's cost model, thresholds and decisions
    (``publisher.scheduler``); ends in other processes report in their own process.
    """

    channel: str
    publisher: ChannelStats | None
    subscribers: tuple[ChannelStats, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "publisher": None if self.publisher is None else self.publisher.as_dict(),
            "subscribers": [sub.as_dict() for sub in self.subscribers],
        }


def notify_summary(counters: Counters) -> dict[str, dict[str, int]]:
    """Publications by notification policy, then outcome (policies never used left out)."""
    flat = list(counters.notified)
    out: dict[str, dict[str, int]] = {}
    for p, policy in enumerate(NOTIFY_POLICIES):
        row = flat[p * 3 : p * 3 + 3]
        if any(row):
            out[policy] = dict(zip(NOTIFY_OUTCOMES, row, strict=True))
    return out


def offload_summary(counters: Counters) -> dict[str, dict[str, float]]:
    return {
        engine: {
            "count": float(counters.offload_count[engine]),
            "mean_us": (
                counters.offload_sum_s[engine] / counters.offload_count[engine] * 1e6
                if counters.offload_count[engine]
                else 0.0
            ),
        }
        for engine in counters.offload_count
    }


def snapshot(
    counters: Counters,
    *,
    channel: str,
    role: str,
    closed: bool,
    spin_budget_ns: float,
    wake_ns: float,
    in_flight: int,
    capacity: int,
    arena_bytes_in_use: int,
    arena_bytes: int,
    scheduler: dict[str, Any] | None = None,
    spin_backoff: int = 0,
) -> ChannelStats:
    """Assemble a :class:`ChannelStats` from one end's counters and state."""
    by_path = counters.by_path()
    waits = counters.waits
    return ChannelStats(
        channel=channel,
        role=role,
        state="closed" if closed else "open",
        messages=sum(p["messages"] for p in by_path.values()),
        bytes=sum(p["bytes"] for p in by_path.values()),
        by_path=by_path,
        wakeups_sent=counters.wakeups_sent,
        wakeups_received=waits.wakeups_received,
        notify=notify_summary(counters),
        spin_hits=waits.spin_hits,
        spin_misses=waits.spin_misses,
        blocks=waits.blocks,
        timeouts=waits.timeouts,
        spin_budget_us=spin_budget_ns / 1e3,
        wake_cost_us=wake_ns / 1e3,
        in_flight=in_flight,
        capacity=capacity,
        arena_bytes_in_use=arena_bytes_in_use,
        arena_bytes=arena_bytes,
        reclaimed_slots=dict(counters.reclaimed),
        offload=offload_summary(counters),
        scheduler=scheduler,
        spins_on_shared_cpu=waits.shared_cpu,
        spin_backoff=spin_backoff,
    )
