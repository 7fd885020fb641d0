"""What the platform reports of itself: instances, meters, counters and recent decisions.

Nothing here is secret: ids, sizes, states, times, pids and the policy's reasons.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sealserve.platform._actions import DecisionRecord

__all__ = ["InstanceStats", "PlatformStats"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStats:
    """One alive instance."""

    instance_id: int
    #: ``starting``, ``idle`` or ``busy`` (as the router sees it).
    state: str
    memory_mb: int
    budget_mb: float
    #: Models resident (loaded), least recently used first.
    models: tuple[str, ...]
    #: Models being loaded (or planned for when the instance is up).
    loading: tuple[str, ...]
    in_flight: int
    served: int
    age_s: float
    gb_s: float
    runtime_restarting: bool = False
    url: str | None = None
    pid: int | None = None
    runtime_pid: int | None = None
    #: What the host and the runtime used at the last measurement (MB), if measured.
    resident_mb: float | None = None

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["models"] = list(self.models)
        doc["loading"] = list(self.loading)
        doc["age_s"] = round(self.age_s, 3)
        doc["gb_s"] = round(self.gb_s, 3)
        if self.resident_mb is not None:
            doc["resident_mb"] = round(self.resident_mb, 1)
        return doc


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlatformStats:
    """The platform as a whole, at one time."""

    policy: str
    instances: tuple[InstanceStats, ...]
    waiting: int
    in_flight: int
    counters: Mapping[str, int]
    gb_seconds: float
    instance_seconds: float
    decisions: Mapping[str, int]
    recent: tuple[DecisionRecord, ...]
    config: Mapping[str, Any]
    #: The part of ``gb_seconds`` billed to instances while they were spares (kept ready).
    spare_gb_seconds: float = 0.0

    def to_json(self, *, recent: int | None = None) -> dict[str, Any]:
        decisions = self.recent if recent is None else self.recent[-recent:] if recent else ()
        return {
            "policy": self.policy,
            "instances": [i.to_json() for i in self.instances],
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "counters": dict(self.counters),
            "gb_seconds": round(self.gb_seconds, 3),
            "spare_gb_seconds": round(self.spare_gb_seconds, 3),
            "instance_seconds": round(self.instance_seconds, 3),
            "decisions": dict(self.decisions),
            "recent_decisions": [d.to_json() | {"text": d.describe()} for d in decisions],
            "config": dict(self.config),
        }
