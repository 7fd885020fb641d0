"""A policy wrapper the live platform puts around every FnPacker policy.

Two things the simulator does not need and the platform does:

* a cap on the instances alive at once over *all* functions: ``dedicated`` gives every model a
  function of its own and the group's ``max_instances`` applies per function, but a machine
  has one budget of processes.  A ``START`` past the cap becomes a ``WAIT`` (the request is
  held until an instance frees a slot or scales to zero, or its deadline passes);
* times the platform could not measure: a request that never ran (its deadline passed while it
  waited for a cold start) has no execution time, and a load that failed has no load time.
  The controller reports them as negative durations and this wrapper does not pass them on,
  so the policy learns only from what was measured.
"""

from __future__ import annotations

from typing import Any

from sealserve.packer import (
    Decision,
    DecisionKind,
    FunctionGroup,
    Instance,
    Policy,
    RouteRequest,
)

__all__ = ["CappedPolicy"]


class CappedPolicy(Policy):
    """``policy`` with a global cap of ``max_instances`` (see the module docstring)."""

    name = "capped"

    def __init__(self, policy: Policy, *, max_instances: int) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy, got {type(policy).__name__}")
        if isinstance(max_instances, bool) or not isinstance(max_instances, int):
            raise ValueError(f"max_instances must be an int >= 1, got {max_instances!r}")
        if max_instances < 1:
            raise ValueError(f"max_instances must be an int >= 1, got {max_instances!r}")
        self.inner = policy
        self.max_instances = max_instances
        self.name = policy.name  # type: ignore[misc]  # reports name the policy, not the cap
        self.resident_limit = policy.resident_limit

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        decision = self.inner.route(request, group, now)
        # Spares count: they are processes too.  A start that a spare of its size will take
        # adds none, so it is always allowed.
        if (
            decision.kind is DecisionKind.START
            and len(group.instances) + len(group.spares) >= self.max_instances
            and not group.has_spare_for(decision.shape or group.config.shape)
        ):
            return Decision.wait(
                request.model,
                reason=f"the platform runs its maximum of {self.max_instances} instances "
                f"(the policy would {decision.reason or 'start one'})",
            )
        return decision

    def on_arrival(self, request: RouteRequest, now: float) -> None:
        self.inner.on_arrival(request, now)

    def on_routed(
        self, request: RouteRequest, decision: Decision, group: FunctionGroup, now: float
    ) -> None:
        self.inner.on_routed(request, decision, group, now)

    def on_ready(self, instance: Instance, cold_start_s: float, now: float) -> None:
        if cold_start_s >= 0:
            self.inner.on_ready(instance, cold_start_s, now)

    def on_loaded(self, instance: Instance, model: str, load_s: float, now: float) -> None:
        if load_s >= 0:
            self.inner.on_loaded(instance, model, load_s, now)

    def on_complete(
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        if exec_s >= 0:
            self.inner.on_complete(request, instance, exec_s, now)

    def on_stopped(self, instance: Instance, now: float) -> None:
        self.inner.on_stopped(instance, now)

    def options(self) -> dict[str, Any]:
        return {**self.inner.options(), "max_instances": self.max_instances}

    def __repr__(self) -> str:
        return f"CappedPolicy({self.inner!r}, max_instances={self.max_instances})"
