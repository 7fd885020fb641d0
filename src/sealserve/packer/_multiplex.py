"""``lru-multiplex``: model multiplexing as Ray Serve does it.

Every instance can serve any model and keeps at most ``max_models`` of them, evicting the least
recently used.  A request goes, in order of preference, to an instance that holds (or is
loading) its model, the least loaded first; else to the instance with the fewest models (the
least loaded among those), which loads it; else the group scales out by a cold start, up to its
maximum; past that it waits.  Ray Serve's router also waits briefly for a full replica that
holds the model before falling back; here a free slot elsewhere is taken at once.
"""

from __future__ import annotations

from typing import Any

from sealserve.packer._decision import Decision, RouteRequest
from sealserve.packer._group import FunctionGroup
from sealserve.packer._policy import Policy, require_fits

__all__ = ["LruMultiplexPolicy"]


class LruMultiplexPolicy(Policy):
    """Prefer instances holding the model; at most ``max_models`` per instance, LRU eviction."""

    name = "lru-multiplex"

    def __init__(self, *, max_models: int = 3) -> None:
        if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1:
            raise ValueError(f"max_models must be an int >= 1, got {max_models!r}")
        self.max_models = max_models
        self.resident_limit = max_models

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        model = request.model
        require_fits(group, model)
        free = [i for i in group if i.free_slots > 0]
        holders = [i for i in free if model in i.models]
        if holders:
            inst = min(holders, key=lambda i: (i.in_flight, i.id))
            plan = group.plan(inst.id, model)
            if plan is not None:
                return Decision.run(
                    model,
                    inst.id,
                    load=plan.load,
                    evict=plan.evict,
                    reason=f"i{inst.id} holds the model; least loaded of {len(holders)}",
                )
        ranked = sorted(free, key=lambda i: (len(i.models), i.in_flight, i.id))
        for inst in ranked:
            plan = group.plan(inst.id, model)
            if plan is not None:
                return Decision.run(
                    model,
                    inst.id,
                    load=plan.load,
                    evict=plan.evict,
                    reason=f"no instance holds the model; i{inst.id} has the fewest models "
                    f"({len(inst.models)})",
                )
        if group.can_start():
            return Decision.start(model, reason="no instance has a free slot that fits the model")
        return Decision.wait(model, reason="the group is at max_instances and no slot fits")

    def options(self) -> dict[str, Any]:
        return {"max_models": self.max_models}
