"""Channels: one segment, one publisher, up to sixteen subscribers.

A :class:`Channel` wraps one mapped segment on one side.  The side that creates it
(:meth:`Channel.create`) sizes it; the other side maps the same memory from a descriptor
(:meth:`Channel.from_segment`, done for you by :mod:`sealserve.ipc._handshake`).

Subscriber slots are handed out by the publisher's process (or before any publisher exists),
so the publisher always knows exactly which messages each subscriber must release.
"""

from __future__ import annotations

import dataclasses
import enum

from prometheus_client import CollectorRegistry

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve.errors import IPCError
from sealserve.ipc import _sys
from sealserve.ipc._engines import CopyEngine, ThreadEngine
from sealserve.ipc._layout import (
    CONSUMER_FREE,
    CONSUMER_LIVE,
    MAX_SUBSCRIBERS,
    PRODUCER_NONE,
    Geometry,
    W,
)
from sealserve.ipc._link import Link
from sealserve.ipc._metrics import IPCMetrics
from sealserve.ipc._notify import QoS
from sealserve.ipc._publisher import Publisher
from sealserve.ipc._scheduler import Scheduler
from sealserve.ipc._segment import Memory, Segment
from sealserve.ipc._stats import ChannelReport
from sealserve.ipc._subscriber import Subscriber

__all__ = ["Channel", "ChannelOptions", "ChannelState"]

_MIB = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChannelOptions:
    """The shape of a channel, fixed when it is created.

    ``arena_bytes`` bounds the largest message (a sealed model of 400 MB needs an arena at
    least that large; pages are only committed while used).  ``trim_above`` gives back the
    pages of any reclaimed message at least that large (``None``: never).
    """

    capacity: int = 64
    arena_bytes: int = 64 * _MIB
    max_subscribers: int = 1
    memory: Memory = "auto"
    trim_above: int | None = 256 * _MIB

    def __post_init__(self) -> None:
        Geometry.plan(
            capacity=self.capacity,
            arena_bytes=self.arena_bytes,
            max_subscribers=self.max_subscribers,
        )
        if self.memory not in ("auto", "memfd", "shm", "anonymous"):
            raise ValueError(
                f"memory must be one of auto, memfd, shm, anonymous, got {self.memory!r}"
            )
        if self.trim_above is not None and self.trim_above < 1:
            raise ValueError(f"trim_above must be >= 1 or None, got {self.trim_above!r}")


class ChannelState(enum.Enum):
    OPENED = "opened"
    CLOSED = "closed"


class Channel:
    """One channel segment as seen from this process."""

    def __init__(
        self,
        segment: Segment,
        *,
        name: str,
        trim_above: int | None,
        clock: Clock,
        registry: CollectorRegistry | None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.segment = segment
        self.name = name
        self.trim_above = trim_above
        self._clock = clock
        self._metrics = IPCMetrics.for_registry(registry)
        self._publisher: Publisher | None = None
        self._subscribers: list[Subscriber] = []
        self.state = ChannelState.OPENED

    @classmethod
    def create(
        cls,
        options: ChannelOptions | None = None,
        *,
        name: str = "channel",
        clock: Clock = SYSTEM_CLOCK,
        registry: CollectorRegistry | None = None,
    ) -> Channel:
        """Create a channel in fresh shared memory shaped by ``options``."""
        opts = options or ChannelOptions()
        segment = Segment.create(
            capacity=opts.capacity,
            arena_bytes=opts.arena_bytes,
            max_subscribers=opts.max_subscribers,
            memory=opts.memory,
            clock=clock,
        )
        return cls(segment, name=name, trim_above=opts.trim_above, clock=clock, registry=registry)

    @classmethod
    def from_segment(
        cls,
        segment: Segment,
        *,
        name: str = "channel",
        trim_above: int | None = 256 * _MIB,
        clock: Clock = SYSTEM_CLOCK,
        registry: CollectorRegistry | None = None,
    ) -> Channel:
        """Wrap a segment mapped from a peer's descriptor."""
        return cls(segment, name=name, trim_above=trim_above, clock=clock, registry=registry)

    # -- ends ----------------------------------------------------------------------------------

    def publisher(
        self,
        *,
        qos: QoS | str = QoS.LATENCY,
        scheduler: Scheduler | None = None,
        engines: list[CopyEngine] | None = None,
        require_subscriber: bool = False,
    ) -> Publisher:
        """Become the channel's one producer.

        ``engines`` are the asynchronous copy engines the scheduler may use (default: one
        :class:`ThreadEngine`, owned and closed by the publisher).  With
        ``require_subscriber`` (point-to-point channels) a subscriber that dies or leaves
        turns every later call into :class:`PeerDied` / :class:`ChannelClosed`.
        """
        self._ensure_open()
        if self._publisher is not None:
            raise IPCError(f"channel {self.name!r} already has a publisher in this process")
        q = QoS.parse(qos)
        owned: list[CopyEngine] = []
        if engines is None:
            engines = owned = [ThreadEngine()]
        if scheduler is None:
            scheduler = Scheduler(cache_bytes=_sys.consumer_cache_bytes())
        for engine in engines:
            if not isinstance(engine, CopyEngine):
                raise TypeError(
                    f"engines must implement CopyEngine (name, asynchronous, kind, submit, "
                    f"backlog_bytes, close), got {engine!r}"
                )
            if engine.name not in scheduler.engines:
                scheduler.register_engine(
                    engine.name,
                    asynchronous=engine.asynchronous,
                    kind="device" if engine.kind == "device" else "thread",
                )
        pub = Publisher(
            self,
            qos=q,
            scheduler=scheduler,
            engines=engines,
            require_subscriber=require_subscriber,
            clock=self._clock,
            owned_engines=owned,
            on_close=self._publisher_closed,
        )
        self._publisher = pub
        self._metrics.track(pub)
        return pub

    def subscriber(
        self,
        *,
        qos: QoS | str = QoS.LATENCY,
        slot: int | None = None,
        link: Link | None = None,
    ) -> Subscriber:
        """Attach a consumer; ``slot`` claims one reserved for this side by the creator."""
        self._ensure_open()
        if slot is None:
            slot = self.reserve_slot()
        elif not 0 <= slot < self.segment.geometry.max_subscribers:
            raise ValueError(f"slot must be within [0, {MAX_SUBSCRIBERS}), got {slot!r}")
        sub = Subscriber(
            self,
            slot=slot,
            qos=QoS.parse(qos),
            link=link,
            clock=self._clock,
            on_close=self._subscriber_closed,
        )
        self._subscribers.append(sub)
        self._metrics.track(sub)
        return sub

    def reserve_slot(self, *, link: Link | None = None) -> int:
        """Reserve a subscriber slot (for this process or for a peer to claim)."""
        self._ensure_open()
        if self._publisher is not None:
            return self._publisher.attach_slot(link=link)
        w = self.segment.words
        if w[W.PSTATE] != PRODUCER_NONE:
            raise IPCError(
                f"channel {self.name!r} has a publisher in another process; subscribers "
                "attach through the publisher's process"
            )
        for slot in range(self.segment.geometry.max_subscribers):
            cw = Geometry.consumer_word(slot)
            if w[cw + W.C_STATE] == CONSUMER_FREE:
                w[cw + W.C_START] = w[W.HEAD]
                w[cw + W.C_WAITING] = 0
                w[cw + W.C_STATE] = CONSUMER_LIVE
                return slot
        raise IPCError(f"channel {self.name!r} has all its subscriber slots taken")

    def stats(self) -> ChannelReport:
        """The stats of the publisher and the subscribers made here (see :class:`ChannelReport`).

        The publisher's include the scheduler's cost model, thresholds and decisions.
        """
        self._ensure_open()
        pub = self._publisher
        return ChannelReport(
            channel=self.name,
            publisher=None if pub is None else pub.stats(),
            subscribers=tuple(sub.stats() for sub in self._subscribers if not sub.closed),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self.state is ChannelState.CLOSED:
            raise IPCError(f"channel {self.name!r} is closed")

    def _publisher_closed(self, pub: Publisher) -> None:
        self._metrics.untrack(pub)

    def _subscriber_closed(self, sub: Subscriber) -> None:
        self._metrics.untrack(sub)

    def close(self) -> None:
        """Close the ends made here, stop owned engines and unmap the segment."""
        if self.state is ChannelState.CLOSED:
            return
        if self._publisher is not None:
            self._publisher.close()
        for sub in self._subscribers:
            sub.close()
        self.state = ChannelState.CLOSED
        self.segment.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        g = self.segment.geometry
        return (
            f"Channel(name={self.name!r}, state={self.state.value!r}, capacity={g.capacity}, "
            f"arena_bytes={g.arena_size}, max_subscribers={g.max_subscribers})"
        )
