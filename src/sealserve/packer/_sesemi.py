"""``sesemi``: the FnPacker router of SeSeMI (Middleware '23), on our runtime.

The routing decisions are SeSeMI's, as its published router makes them
(``PickFnInstance``, ``steal_func`` and ``check_busy_or_exclusive`` in
``fnpacker/fnpack/controller.go``).  The router counts each model's requests in flight and
remembers, per model, the instance it last used (its *endpoint*) and, per instance, the model
that claims it.

* A request whose model already has a request in flight is the second (or later) concurrent
  one: the model claims its endpoint exclusively and the request goes there.
* A request whose model has nothing in flight takes the first instance in pool order (oldest
  first) that no request is using and that is unclaimed, claimed by this model, or whose claim
  has expired; that resets the claim, and the instance becomes the model's endpoint.  Which
  models the instance holds plays no part.
* A claim expires once twice the claiming model's last execution time has passed since its
  last call ended.  As in SeSeMI's statistics, a request that began before the last recorded
  end (it overlapped an earlier one) updates the execution time but not the end.

The runtime under the router is ours (SeMIRT), as for every policy in the simulator: it keeps
the models it loaded resident within its memory budget and, to make room, evicts the least
recently used ones that no request is using.  So a model that returns to an instance that
still holds it runs without a load.  ``resident_limit=1`` caps every instance at one model
instead (a runtime whose enclave holds one model, so every switch is a load): that is the
``sesemi-1model`` ablation, :class:`OneModelSesemiPolicy`.

Where SeSeMI relies on the platform, this model of it does the platform's part: when a
claimed endpoint is at its concurrency, the endpoint scales out by a cold start (the new
instance is claimed too, as OpenWhisk would add a container to the endpoint's action); when no
instance is free, the group scales out (SeSeMI's fixed pool would answer "all busy"); at the
group's maximum the request waits, until the next claim expires at the latest.
"""

from __future__ import annotations

import math
from typing import Any

from sealserve.packer._decision import Decision, DecisionKind, RouteRequest
from sealserve.packer._group import FunctionGroup
from sealserve.packer._instance import Instance
from sealserve.packer._policy import Policy, require_fits

__all__ = ["OneModelSesemiPolicy", "SesemiPolicy"]


class SesemiPolicy(Policy):
    """SeSeMI's FnPacker: exclusive claims for concurrent models, sharing for the rest.

    ``resident_limit`` caps the models one instance holds (``None``: as many as its memory
    budget holds, as our runtime does); ``claim_factor`` is how many of the claimant's last
    execution times a claim outlives its last call (SeSeMI's 2).
    """

    name = "sesemi"

    def __init__(self, *, resident_limit: int | None = None, claim_factor: float = 2.0) -> None:
        if resident_limit is not None and (
            isinstance(resident_limit, bool)
            or not isinstance(resident_limit, int)
            or resident_limit < 1
        ):
            raise ValueError(f"resident_limit must be an int >= 1 or None, got {resident_limit!r}")
        if not claim_factor >= 0 or math.isinf(claim_factor):
            raise ValueError(f"claim_factor must be a finite number >= 0, got {claim_factor!r}")
        self.resident_limit = resident_limit
        self.claim_factor = claim_factor
        self._claims: dict[int, str] = {}
        self._endpoint: dict[str, int] = {}
        self._started: dict[int, float] = {}
        self._last_exec: dict[str, float] = {}
        self._last_done: dict[str, float] = {}

    # -- what tests and reports read ---------------------------------------------------------

    def claims(self) -> dict[int, str]:
        """Instance id -> the model that claims it."""
        return dict(self._claims)

    def claim_expires_at(self, model: str) -> float:
        """When ``model``'s claims may be taken by other models."""
        done = self._last_done.get(model)
        if done is None:
            return float("-inf")
        return done + self.claim_factor * self._last_exec.get(model, 0.0)

    # -- routing ------------------------------------------------------------------------------

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        model = request.model
        require_fits(group, model)
        in_flight = group.in_flight_of(model)
        endpoint = self._endpoint.get(model)
        alive = {i.id: i for i in group}
        if in_flight >= 1 and endpoint in alive:
            return self._to_endpoint(model, in_flight, alive, group)
        return self._take_free(model, group, now)

    def _to_endpoint(
        self, model: str, in_flight: int, alive: dict[int, Instance], group: FunctionGroup
    ) -> Decision:
        endpoint = self._endpoint[model]
        others = (i for i, m in self._claims.items() if m == model and i != endpoint)
        owned = [endpoint, *sorted(i for i in others if i in alive)]
        for iid in owned:
            plan = group.plan(iid, model)
            if plan is not None:
                return Decision.run(
                    model,
                    iid,
                    load=plan.load,
                    evict=plan.evict,
                    reason=f"{in_flight + 1} requests in flight: the model claims i{iid}",
                )
        if group.can_start():
            return Decision.start(
                model, reason="the claimed instance is at its concurrency: the endpoint scales out"
            )
        return Decision.wait(model, reason="the claimed instance is full and the group at its max")

    def _take_free(self, model: str, group: FunctionGroup, now: float) -> Decision:
        next_expiry: float | None = None
        for inst in group:
            if inst.in_flight > 0:
                continue
            owner = self._claims.get(inst.id)
            if owner is not None and owner != model:
                expires = self.claim_expires_at(owner)
                if now < expires:
                    next_expiry = expires if next_expiry is None else min(next_expiry, expires)
                    continue
            plan = group.plan(inst.id, model)
            if plan is None:
                continue
            why = (
                "unclaimed"
                if owner is None
                else ("claimed by this model" if owner == model else f"claim of {owner!r} expired")
            )
            return Decision.run(
                model,
                inst.id,
                load=plan.load,
                evict=plan.evict,
                reason=f"first free instance, {why}",
            )
        if group.can_start():
            return Decision.start(model, reason="every instance is in use or claimed")
        return Decision.wait(
            model,
            retry_at=next_expiry,
            reason="every instance is in use or claimed and the group is at its max",
        )

    # -- learning ------------------------------------------------------------------------------

    def on_routed(
        self, request: RouteRequest, decision: Decision, group: FunctionGroup, now: float
    ) -> None:
        if decision.kind is DecisionKind.WAIT or decision.instance_id is None:
            return
        iid = decision.instance_id
        model = request.model
        self._started[request.request_id] = now
        if group.in_flight_of(model) >= 2:
            self._claims[iid] = model
            self._endpoint.setdefault(model, iid)
        else:
            self._claims.pop(iid, None)
            self._endpoint[model] = iid

    def on_complete(
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        model = request.model
        started = self._started.pop(request.request_id, now)
        self._last_exec[model] = exec_s
        # SeSeMI records the end of a call only if the call began after the last recorded end.
        if started > self._last_done.get(model, float("-inf")):
            self._last_done[model] = now

    def on_stopped(self, instance: Instance, now: float) -> None:
        self._claims.pop(instance.id, None)
        for model, iid in list(self._endpoint.items()):
            if iid == instance.id:
                del self._endpoint[model]

    def options(self) -> dict[str, Any]:
        return {"resident_limit": self.resident_limit, "claim_factor": self.claim_factor}


class OneModelSesemiPolicy(SesemiPolicy):
    """SeSeMI's router over a runtime that holds one model per instance (an ablation).

    Every instance keeps only the model it last served, so whichever model takes a free
    instance loads, unless it was the last one there.
    """

    name = "sesemi-1model"

    def __init__(self, *, claim_factor: float = 2.0) -> None:
        super().__init__(resident_limit=1, claim_factor=claim_factor)
