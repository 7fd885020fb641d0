"""What a routing policy decides: run on an existing instance, start a new one, or wait.

A :class:`Decision` is plain data.  It names the instance (or the shape of a new one) and says
what the choice implies (a model load, a cold start, which models the load evicts), so that
the caller can act on it and report it, and it carries a one-line ``reason`` that explains it.
"""

from __future__ import annotations

import dataclasses
import enum
import math

__all__ = ["Decision", "DecisionKind", "InstanceShape", "RouteRequest"]


class DecisionKind(enum.Enum):
    """The three things a router can do with a request."""

    #: Send it to an existing instance (ready or still starting) that has a free slot.
    RUN = "run"
    #: Start a new instance (a cold start) and send it there.
    START = "start"
    #: Hold it at the router and route it again when the group changes (or at ``retry_at``).
    WAIT = "wait"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InstanceShape:
    """How a new instance is configured: its function, billed memory and model budget.

    ``function`` names the serverless function the instance belongs to; the maximum instance
    count applies per function.  Policies that pack models share one function (the group's);
    ``dedicated`` gives every model its own.
    """

    function: str
    memory_mb: int
    budget_mb: float

    def __post_init__(self) -> None:
        if not self.function:
            raise ValueError("function must be a non-empty name, got ''")
        if self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, got {self.memory_mb!r}")
        if not self.budget_mb > 0 or math.isinf(self.budget_mb):
            raise ValueError(f"budget_mb must be a finite number > 0, got {self.budget_mb!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRequest:
    """One request as the router sees it: an id, the model it names and when it arrived.

    ``attempt`` counts earlier routings that ended in :attr:`DecisionKind.WAIT`.
    """

    request_id: int
    model: str
    arrived_at: float
    attempt: int = 0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty name, got ''")
        if self.attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {self.attempt!r}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A routing decision; build one with :meth:`run`, :meth:`start` or :meth:`wait`.

    ``instance_id`` is the target of a ``RUN``; for a ``START`` it is ``None`` until the
    router has created the instance (the router returns a copy with the new id).
    ``load`` is true when this request makes the instance load its model (a request that joins
    a load already under way does not), ``cold_start`` when it starts an instance; ``evict``
    lists the models the load pushes out of the instance's memory.  ``expected_s`` is the
    policy's estimate of the request's latency from now, when it makes one.
    """

    kind: DecisionKind
    model: str
    instance_id: int | None = None
    shape: InstanceShape | None = None
    load: bool = False
    cold_start: bool = False
    evict: tuple[str, ...] = ()
    retry_at: float | None = None
    expected_s: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind is DecisionKind.RUN:
            if self.instance_id is None:
                raise ValueError("a RUN decision needs an instance_id, got None")
            if self.cold_start:
                raise ValueError("a RUN decision cannot imply a cold start")
        elif self.kind is DecisionKind.START:
            if not (self.cold_start and self.load):
                raise ValueError("a START decision implies a cold start and a model load")
        else:
            if self.instance_id is not None or self.load or self.cold_start or self.evict:
                raise ValueError("a WAIT decision names no instance and implies no work")

    @classmethod
    def run(
        cls,
        model: str,
        instance_id: int,
        *,
        load: bool,
        evict: tuple[str, ...] = (),
        expected_s: float | None = None,
        reason: str,
    ) -> Decision:
        """Send the request to instance ``instance_id``."""
        return cls(
            kind=DecisionKind.RUN,
            model=model,
            instance_id=instance_id,
            load=load,
            evict=evict,
            expected_s=expected_s,
            reason=reason,
        )

    @classmethod
    def start(
        cls,
        model: str,
        *,
        shape: InstanceShape | None = None,
        expected_s: float | None = None,
        reason: str,
    ) -> Decision:
        """Start a new instance (of ``shape``, else the group's default) for the request."""
        return cls(
            kind=DecisionKind.START,
            model=model,
            shape=shape,
            load=True,
            cold_start=True,
            expected_s=expected_s,
            reason=reason,
        )

    @classmethod
    def wait(
        cls,
        model: str,
        *,
        retry_at: float | None = None,
        expected_s: float | None = None,
        reason: str,
    ) -> Decision:
        """Hold the request; route it again when the group changes or at ``retry_at``."""
        return cls(
            kind=DecisionKind.WAIT,
            model=model,
            retry_at=retry_at,
            expected_s=expected_s,
            reason=reason,
        )

    def describe(self) -> str:
        """One line for a log or a demo: what was decided and why."""
        where = {
            DecisionKind.RUN: f"run on i{self.instance_id}",
            DecisionKind.START: f"start i{self.instance_id}"
            if self.instance_id is not None
            else "start a new instance",
            DecisionKind.WAIT: "wait",
        }[self.kind]
        extra = []
        if self.load:
            extra.append("load")
        if self.evict:
            extra.append("evict " + ",".join(self.evict))
        tail = f" [{'; '.join(extra)}]" if extra else ""
        return f"{self.model}: {where}{tail}: {self.reason}"
