"""What the platform controller keeps of each request, model load and instance."""

from __future__ import annotations

import dataclasses
import enum

from sealserve.platform._actions import DecisionRecord

__all__ = ["InstanceRecord", "LoadInFlight", "RequestPhase", "Tracked"]


class RequestPhase(enum.Enum):
    """Where a request is: held at the router, on an instance waiting for its start or its
    model, or sent to the instance."""

    WAITING = "waiting"
    ASSIGNED = "assigned"
    RUNNING = "running"


@dataclasses.dataclass(slots=True)
class Tracked:
    """A request from its submission to its answer."""

    request_id: int
    model: str
    user_id: str
    arrived_at: float
    deadline: float
    phase: RequestPhase = RequestPhase.WAITING
    instance_id: int | None = None
    #: Whether the router still holds it (not after its instance failed under it).
    in_group: bool = True
    #: Already answered (its deadline passed); it is let go once it can be.
    abandoned: bool = False
    waits: int = 0
    retry_at: float | None = None
    reroutes: int = 0
    decision: DecisionRecord | None = None
    cold_start: bool = False
    sent_at: float | None = None


@dataclasses.dataclass(slots=True)
class LoadInFlight:
    """A model load under way: whose keys load it, and since when."""

    user_id: str
    began_at: float


@dataclasses.dataclass(slots=True)
class InstanceRecord:
    """An alive instance as the platform started it: its shape, its times, its health."""

    memory_mb: int
    budget_mb: float
    spawned_at: float
    ready_at: float | None = None
    failed_checks: int = 0
    runtime_restarting: bool = False
    #: A spare (started ahead of demand), and when a request took it.
    spare: bool = False
    taken_at: float | None = None
