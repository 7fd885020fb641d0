"""The cost meter: GB-seconds per instance, as serverless platforms bill.

An instance is billed its configured memory for as long as it is alive: from the moment the
platform spawns it (the cold start is billed too) until it has stopped.  Time is given by the
caller (the controller's ``now``), so the meter is exact under a manual clock.
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

    def seconds(self, now: float) -> float:
        end = self.stopped_at if self.stopped_at is not None else now
        return max(0.0, end - self.started_at)

    def gb_seconds(self, now: float) -> float:
        return self.memory_mb / _MB_PER_GB * self.seconds(now)


class CostMeter:
    """GB-seconds of every instance the platform ran (alive ones up to ``now``)."""

    def __init__(self) -> None:
        self._instances: dict[int, MeteredInstance] = {}

    def start(self, instance_id: int, *, memory_mb: int, now: float) -> None:
        """Billing of ``instance_id`` begins at ``now`` (when it is spawned)."""
        if instance_id in self._instances:
            raise ValueError(f"instance_id {instance_id!r} is already metered")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 1:
            raise ValueError(f"memory_mb must be an int >= 1, got {memory_mb!r}")
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time, got {now!r}")
        self._instances[instance_id] = MeteredInstance(instance_id, memory_mb, now)

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
