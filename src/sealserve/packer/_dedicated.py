"""``dedicated``: one function per model, the usual deployment and the baseline.

Each model gets a function of its own, whose instances only ever hold that model and are sized
for it (the runtime plus the model, rounded up to the platform's memory step), as an operator
would configure one function per model.  A request goes to an instance of its model's function
with a free slot (the busiest first, as platforms fill an instance's concurrency before using
another); when there is none, the function scales out by a cold start, up to the per-function
maximum; past that it waits.
"""

from __future__ import annotations

from typing import Any

from sealserve.packer._decision import Decision, RouteRequest
from sealserve.packer._group import FunctionGroup
from sealserve.packer._policy import Policy, packed_order

__all__ = ["DedicatedPolicy"]


class DedicatedPolicy(Policy):
    """One function per model, each instance sized for its one model."""

    name = "dedicated"
    resident_limit = 1

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        model = request.model
        shape = group.config.fitted_shape(
            self.function_of(group, model), group.model_memory_mb(model)
        )
        own = [i for i in group if i.function == shape.function]
        for inst in packed_order(own):
            plan = group.plan(inst.id, model)
            if plan is not None:
                state = "ready" if inst.is_ready else "starting"
                return Decision.run(
                    model,
                    inst.id,
                    load=plan.load,
                    evict=plan.evict,
                    reason=f"{state} instance of function {shape.function!r} has a free slot",
                )
        if group.can_start(shape):
            return Decision.start(
                model,
                shape=shape,
                reason=f"every instance of function {shape.function!r} is full or none is alive",
            )
        return Decision.wait(
            model,
            reason=f"function {shape.function!r} is at max_instances and every slot is busy",
        )

    @staticmethod
    def function_of(group: FunctionGroup, model: str) -> str:
        """The name of ``model``'s own function."""
        return f"{group.config.name}/{model}"

    def options(self) -> dict[str, Any]:
        return {}
