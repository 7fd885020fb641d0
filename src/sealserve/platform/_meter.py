"""The cost meter: GB-seconds per instance, as serverless platforms bill.

An instance is billed its configured memory for as long as it is alive: from the moment the
platform spawns it (the cold start is billed too) until it has stopped.  Time is given by the
caller (the controller's ``now``), so the meter is exact under a manual clock.

A spare (an instance started ahead of demand, see :mod:`sealserve.packer._spares`) is billed
like any other; the meter also keeps what it cost while it was a spare (from its start until a
request took it, or until it stopped untaken): :meth:`CostMeter.spare_gb_seconds`.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["CostMeter", "MeteredInstance"]

_MB_PER_GB = 1024.0


@dataclasses.dataclass(slots=True)
class MeteredInstance:
    """One instance's billing interval: configured memory, start, and stop once it stopped."""

    instance_id: int
    memory_mb: int
    started_at: float
    stopped_at: float | None = None
    #: Started as a spare; ``taken_at``: when a request took it (it is a spare no more).
    spare: bool = False
    taken_at: float | None = None

    def seconds(self, now: float) -> float:
        end = self.stopped_at if self.stopped_at is not None else now
        return max(0.0, end - self.started_at)

    def gb_seconds(self, now: float) -> float:
        return self.memory_mb / _MB_PER_GB * self.seconds(now)

    def spare_gb_seconds(self, now: float) -> float:
        """The part of :meth:`gb_seconds` billed while it was a spare (0 if it never was)."""
        if not self.spare:
            return 0.0
        ends = [t for t in (self.taken_at, self.stopped_at) if t is not None]
        end = min(ends) if ends else now
        return self.memory_mb / _MB_PER_GB * max(0.0, end - self.started_at)


class CostMeter:
    """GB-seconds of every instance the platform ran (alive ones up to ``now``)."""

    def __init__(self) -> None:
        self._instances: dict[int, MeteredInstance] = {}

    def start(self, instance_id: int, *, memory_mb: int, now: float, spare: bool = False) -> None:
        """Billing of ``instance_id`` begins at ``now`` (when it is spawned); ``spare``: it is
        started ahead of demand, until :meth:`take`."""
        if instance_id in self._instances:
            raise ValueError(f"instance_id {instance_id!r} is already metered")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 1:
            raise ValueError(f"memory_mb must be an int >= 1, got {memory_mb!r}")
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time, got {now!r}")
        self._instances[instance_id] = MeteredInstance(instance_id, memory_mb, now, spare=spare)

    def take(self, instance_id: int, *, now: float) -> bool:
        """A request took the spare ``instance_id`` at ``now``; false if it was no spare (or
        no longer one: taken or stopped)."""
        try:
            inst = self._instances[instance_id]
        except KeyError:
            raise ValueError(f"instance_id {instance_id!r} is not metered") from None
        if not inst.spare or inst.taken_at is not None or inst.stopped_at is not None:
            return False
        inst.taken_at = max(now, inst.started_at)
        return True

    def stop(self, instance_id: int, *, now: float) -> bool:
        """Billing of ``instance_id`` ends at ``now``; false if it had already ended."""
        try:
            inst = self._instances[instance_id]
        except KeyError:
            raise ValueError(f"instance_id {instance_id!r} is not metered") from None
        if inst.stopped_at is not None:
            return False
        inst.stopped_at = max(now, inst.started_at)
        return True

    def is_running(self, instance_id: int) -> bool:
        inst = self._instances.get(instance_id)
        return inst is not None and inst.stopped_at is None

    def gb_seconds(self, now: float, instance_id: int | None = None) -> float:
        """GB-seconds of one instance, or of all of them, up to ``now``."""
        if instance_id is not None:
            try:
                return self._instances[instance_id].gb_seconds(now)
            except KeyError:
                raise ValueError(f"instance_id {instance_id!r} is not metered") from None
        return sum(i.gb_seconds(now) for i in self._instances.values())

    def spare_gb_seconds(self, now: float) -> float:
        """GB-seconds of instances while they were spares, up to ``now`` (part of
        :meth:`gb_seconds`: the price of keeping instances ready)."""
        return sum(i.spare_gb_seconds(now) for i in self._instances.values())

    def instance_seconds(self, now: float) -> float:
        return sum(i.seconds(now) for i in self._instances.values())

    def per_instance(self, now: float) -> dict[int, float]:
        """GB-seconds by instance id, oldest first."""
        return {iid: i.gb_seconds(now) for iid, i in self._instances.items()}

    @property
    def started(self) -> int:
        """Instances ever metered."""
        return len(self._instances)

    @property
    def running(self) -> int:
        return sum(1 for i in self._instances.values() if i.stopped_at is None)

    def __repr__(self) -> str:
        return f"CostMeter(started={self.started}, running={self.running})"
