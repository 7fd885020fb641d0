"""What the platform's controller asks its driver to do, and the decisions it records.

The controller (:class:`~sealserve.platform.PlatformController`) is pure: each event it is
told about returns a list of actions, which the driver carries out on a backend (processes on
this machine, or another platform) and whose outcomes it reports back as new events.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

from sealserve.errors import SealserveError
from sealserve.packer import Decision, DecisionKind

__all__ = [
    "Action",
    "DecisionRecord",
    "LoadModel",
    "Reject",
    "RunRequest",
    "StartInstance",
    "StopInstance",
]


@dataclasses.dataclass(frozen=True, slots=True)
class StartInstance:
    """Spawn instance ``instance_id`` (a cold start, or a spare started ahead of demand);
    report ``started`` or ``start_failed``."""

    instance_id: int
    memory_mb: int
    budget_mb: float
    concurrency: int
    spare: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LoadModel:
    """Make ``model`` resident on the instance with the keys of ``user_id`` (evicting ``evict``
    first); report ``loaded``."""

    instance_id: int
    model: str
    user_id: str
    evict: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RunRequest:
    """Send request ``request_id`` to the instance; report ``finished``."""

    request_id: int
    instance_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class StopInstance:
    """Stop the instance (it is idle past its keep-alive, or it failed)."""

    instance_id: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """Answer request ``request_id`` with ``error``; it is not served."""

    request_id: int
    error: SealserveError


Action: TypeAlias = StartInstance | LoadModel | RunRequest | StopInstance | Reject


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRecord:
    """One routing decision as applied, with its reason: what ``sealserve up`` and the demo show.

    ``at`` is the platform clock's wall time (Unix seconds); ``waits`` counts the routings of
    the request that ended in WAIT before this one.
    """

    request_id: int
    model: str
    kind: str
    instance_id: int | None
    load: bool
    cold_start: bool
    evict: tuple[str, ...]
    reason: str
    expected_ms: float | None
    waits: int
    at: float

    @classmethod
    def of(cls, request_id: int, decision: Decision, *, waits: int, at: float) -> DecisionRecord:
        return cls(
            request_id=request_id,
            model=decision.model,
            kind=decision.kind.value,
            instance_id=decision.instance_id,
            load=decision.load,
            cold_start=decision.cold_start,
            evict=tuple(decision.evict),
            reason=decision.reason,
            expected_ms=None if decision.expected_s is None else decision.expected_s * 1000,
            waits=waits,
            at=at,
        )

    def describe(self) -> str:
        """One line: ``<model>: run on i0 [load; evict a]: <reason>`` (as the packer says it)."""
        if self.kind == DecisionKind.RUN.value:
            where = f"run on i{self.instance_id}"
        elif self.kind == DecisionKind.START.value:
            where = f"start i{self.instance_id}"
        else:
            where = "wait"
        extra = []
        if self.load:
            extra.append("load")
        if self.evict:
            extra.append("evict " + ",".join(self.evict))
        if self.waits:
            extra.append(f"after {self.waits} wait{'s' if self.waits > 1 else ''}")
        tail = f" [{'; '.join(extra)}]" if extra else ""
        return f"{self.model}: {where}{tail}: {self.reason}"

    def to_json(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "kind": self.kind,
            "instance_id": self.instance_id,
            "load": self.load,
            "cold_start": self.cold_start,
            "evict": list(self.evict),
            "reason": self.reason,
            "expected_ms": None if self.expected_ms is None else round(self.expected_ms, 3),
            "waits": self.waits,
            "at": self.at,
        }
