"""``dedicated``: one function per model, the usual deployment and the baseline.

Each model gets a function of its own, whose instances only ever hold that model.  Under
``dedicated`` every function has the packed group's instance configuration: in sealserve, as in
SeSeMI, every function runs the same attested runtime build, and a TEE fixes the enclave's
memory at build time as part of its measurement (SGX's enclave size is in MRENCLAVE), so a
function with a memory size of its own is a different measured runtime, which every model
owner would have to grant.  ``dedicated-fitted`` sizes each model's function for its model
instead (the runtime plus the model, rounded up to the platform's memory step), as the user of
an ordinary serverless platform would: it is what packing saves against right-sized functions,
reported beside the baseline.

A request goes to an instance of its model's function with a free slot (the busiest first, as
platforms fill an instance's concurrency before using another); when there is none, the
function scales out by a cold start, up to the per-function maximum; past that it waits.
"""

from __future__ import annotations

from typing import Any

from sealserve.errors import PackerError
from sealserve.packer._decision import Decision, InstanceShape, RouteRequest
from sealserve.packer._group import FunctionGroup
from sealserve.packer._policy import Policy, packed_order

__all__ = ["DedicatedPolicy", "FittedDedicatedPolicy", "UniformDedicatedPolicy"]


class DedicatedPolicy(Policy):
    """One function per model, every function on the group's instance configuration."""

    name = "dedicated"
    resident_limit = 1

    def shape_for(self, group: FunctionGroup, model: str) -> InstanceShape:
        """The shape of ``model``'s function's instances: the group's memory and budget."""
        base = group.config.shape
        return InstanceShape(
            function=self.function_of(group, model),
            memory_mb=base.memory_mb,
            budget_mb=base.budget_mb,
        )

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        model = request.model
        shape = self.shape_for(group, model)
        if not group.fits(model, shape):
            raise PackerError(
                f"model {model!r} needs {group.model_memory_mb(model):.0f} MB, more than "
                f"the instance budget of {shape.budget_mb:.0f} MB; raise the budget"
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


class FittedDedicatedPolicy(DedicatedPolicy):
    """One function per model, each function's instances sized for its one model."""

    name = "dedicated-fitted"

    def shape_for(self, group: FunctionGroup, model: str) -> InstanceShape:
        """The runtime plus ``model``, rounded up to the platform's memory step."""
        return group.config.fitted_shape(
            self.function_of(group, model), group.model_memory_mb(model)
        )


#: The earlier name of :class:`DedicatedPolicy` (``make_policy("dedicated-uniform")``).
UniformDedicatedPolicy = DedicatedPolicy
