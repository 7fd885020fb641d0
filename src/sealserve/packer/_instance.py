"""One serverless instance of a function group, as the router sees it.

An instance has a billed memory size, a memory budget for resident models (the runtime's EPC
budget), a concurrency, a state (starting, idle, busy, stopped), its resident models in
least-recently-used order (each loaded, loading, or planned for when the instance is up), its
in-flight requests and the time it was last used.  Policies read it; only the
:class:`~sealserve.packer.FunctionGroup` changes it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Literal

from sealserve.packer._decision import InstanceShape

__all__ = ["Instance", "InstanceState"]

_Phase = Literal["planned", "loading", "loaded"]


class InstanceState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPED = "stopped"


@dataclasses.dataclass(slots=True)
class _Resident:
    mb: float
    phase: _Phase
    since: float


@dataclasses.dataclass(slots=True)
class _InFlight:
    request_id: int
    model: str
    instance_id: int
    assigned_at: float
    running_since: float | None = None


class Instance:
    """One serverless instance: read its state here; the group changes it."""

    __slots__ = (
        "_models",
        "_requests",
        "adopted_at",
        "budget_mb",
        "concurrency",
        "function",
        "id",
        "last_used",
        "loads",
        "memory_mb",
        "ready_at",
        "served",
        "started_at",
        "stopped_at",
    )

    def __init__(
        self, *, instance_id: int, shape: InstanceShape, concurrency: int, now: float
    ) -> None:
        self.id = instance_id
        self.function = shape.function
        self.memory_mb = shape.memory_mb
        self.budget_mb = shape.budget_mb
        self.concurrency = concurrency
        self.started_at = now
        self.ready_at: float | None = None
        self.stopped_at: float | None = None
        self.last_used = now
        self.loads = 0
        self.served = 0
        #: When a request took this instance as a spare (``None``: it was never a spare, or
        #: is one still).
        self.adopted_at: float | None = None
        self._models: collections.OrderedDict[str, _Resident] = collections.OrderedDict()
        self._requests: dict[int, _InFlight] = {}

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> InstanceState:
        if self.stopped_at is not None:
            return InstanceState.STOPPED
        if self.ready_at is None:
            return InstanceState.STARTING
        return InstanceState.BUSY if self._requests else InstanceState.IDLE

    @property
    def is_ready(self) -> bool:
        return self.ready_at is not None and self.stopped_at is None

    @property
    def is_alive(self) -> bool:
        return self.stopped_at is None

    @property
    def in_flight(self) -> int:
        """Requests assigned here and not complete (waiting for start or load, or running)."""
        return len(self._requests)

    @property
    def free_slots(self) -> int:
        return self.concurrency - len(self._requests) if self.is_alive else 0

    def in_flight_of(self, model: str) -> int:
        return sum(1 for r in self._requests.values() if r.model == model)

    def request_ids(self) -> tuple[int, ...]:
        return tuple(self._requests)

    def running_since(self, request_id: int) -> float | None:
        """When the request's inference began here; ``None`` while it waits."""
        return self._requests[request_id].running_since

    def request_model(self, request_id: int) -> str:
        return self._requests[request_id].model

    # -- models ------------------------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        """Every model that holds memory here (loaded, loading or planned), oldest use first."""
        return tuple(self._models)

    @property
    def loaded_models(self) -> tuple[str, ...]:
        return tuple(m for m, r in self._models.items() if r.phase == "loaded")

    def holds(self, model: str) -> bool:
        """Whether ``model`` is loaded and ready to run here."""
        res = self._models.get(model)
        return res is not None and res.phase == "loaded"

    def is_loading(self, model: str) -> bool:
        """Whether a load of ``model`` is under way here or will begin when it is ready."""
        res = self._models.get(model)
        return res is not None and res.phase != "loaded"

    def load_started_at(self, model: str) -> float | None:
        """When the load of ``model`` began; ``None`` if it is not loading or not begun."""
        res = self._models.get(model)
        return res.since if res is not None and res.phase == "loading" else None

    @property
    def used_mb(self) -> float:
        return sum(r.mb for r in self._models.values())

    @property
    def free_mb(self) -> float:
        return self.budget_mb - self.used_mb

    def gb_seconds(self, now: float) -> float:
        """Configured memory (GB) x time alive, up to ``now`` or the stop."""
        end = self.stopped_at if self.stopped_at is not None else now
        return self.memory_mb / 1024.0 * max(0.0, end - self.started_at)

    def __repr__(self) -> str:
        return (
            f"Instance(id={self.id}, function={self.function!r}, state={self.state.value}, "
            f"in_flight={self.in_flight}/{self.concurrency}, models={list(self._models)})"
        )
