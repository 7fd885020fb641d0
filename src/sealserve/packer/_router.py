"""The router: one policy in front of one function group, for the simulator and the live path.

The caller owns the clock and the instances; the router owns the group's state and keeps the
policy informed.  The caller's loop::

    routed = router.route(request, now)
    if routed.decision.kind is DecisionKind.WAIT:
        hold the request; route it again after the next event (or at decision.retry_at)
    else:
        if routed.decision.cold_start: start the instance; when up, router.instance_ready(...)
        for model in routed.loads: load it; when done, router.model_loaded(...)
        if routed.run_now: run it; when done, router.request_done(...)
    # instance_ready and model_loaded return the loads to begin and the requests to run next
    for iid in router.expire(now): stop that instance

Every decision is checked against the group before it is applied (a policy that names a full
instance, or a load that does not fit, raises :class:`~sealserve.errors.PackerError`), and is
logged at DEBUG with its reason.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable

from sealserve._log import get_logger
from sealserve.errors import PackerError
from sealserve.packer._config import GroupConfig
from sealserve.packer._decision import Decision, DecisionKind, RouteRequest
from sealserve.packer._group import FunctionGroup, ReadyActions
from sealserve.packer._instance import Instance
from sealserve.packer._policy import Policy
from sealserve.packer._spares import SpareConfig, SparePolicy

__all__ = ["Routed", "Router"]

_log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Routed:
    """An applied decision: ``loads`` begin now on its instance; ``run_now`` says go."""

    decision: Decision
    loads: tuple[str, ...]
    run_now: bool


class Router:
    """Applies a policy's decisions to a :class:`FunctionGroup` and feeds back measurements.

    The group's resident-model cap is the policy's (:attr:`Policy.resident_limit`) when the
    configuration sets none or a larger one.
    """

    def __init__(
        self,
        policy: Policy,
        config: GroupConfig,
        *,
        model_memory_mb: Callable[[str], float],
        history: int = 64,
        spares: SpareConfig | None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy, got {type(policy).__name__}")
        limit = policy.resident_limit
        if limit is not None and (config.max_models is None or config.max_models > limit):
            config = dataclasses.replace(config, max_models=limit)
        self.policy = policy
        self.group = FunctionGroup(config, model_memory_mb=model_memory_mb)
        self._requests: dict[int, RouteRequest] = {}
        self._attempts: dict[int, int] = {}
        self.recent: collections.deque[Decision] = collections.deque(maxlen=history)
        self.decisions = {kind: 0 for kind in DecisionKind}
        self.spare_policy = (
            None
            if spares is None or spares.max_spares == 0
            else SparePolicy(spares, keep_alive_s=config.keep_alive_s)
        )

    def route(self, request: RouteRequest, now: float) -> Routed:
        """Decide for ``request`` and apply the decision (a WAIT is remembered as waiting)."""
        rid = request.request_id
        if rid in self._requests and rid not in self._attempts:
            raise PackerError(f"request {rid!r} is already routed")
        if rid in self._attempts:
            request = dataclasses.replace(request, attempt=self._attempts[rid])
        else:
            self.policy.on_arrival(request, now)
        self._requests[rid] = request
        decision = self.policy.route(request, self.group, now)
        if decision.model != request.model:
            raise PackerError(
                f"policy {self.policy.name!r} decided for {decision.model!r}, "
                f"not the request's model {request.model!r}"
            )
        routed = self._apply(request, decision, now)
        self.decisions[decision.kind] += 1
        self.recent.append(routed.decision)
        if _log.isEnabledFor(logging.DEBUG):
            _log.event(
                "packer.route",
                level=logging.DEBUG,
                policy=self.policy.name,
                request=rid,
                model=request.model,
                kind=decision.kind.value,
                instance=routed.decision.instance_id,
                load=decision.load,
                cold_start=decision.cold_start,
                evict=list(decision.evict),
                reason=decision.reason,
            )
        self.policy.on_routed(request, routed.decision, self.group, now)
        return routed

    def _apply(self, request: RouteRequest, decision: Decision, now: float) -> Routed:
        rid = request.request_id
        group = self.group
        if decision.kind is DecisionKind.WAIT:
            self._attempts[rid] = request.attempt + 1
            group.note_waiting(rid, request.model)
            return Routed(decision, (), False)
        if decision.kind is DecisionKind.START:
            shape = decision.shape or group.config.shape
            if not group.fits(request.model, shape):
                raise PackerError(
                    f"policy {self.policy.name!r} started an instance whose budget "
                    f"({shape.budget_mb:.0f} MB) cannot hold {request.model!r}"
                )
            inst = group.start(shape, now)
            if self.spare_policy is not None:
                self.spare_policy.note_start(shape, now)
            if inst.adopted_at == now:  # a spare took it: nothing to start, a load to do
                decision = Decision.run(
                    request.model,
                    inst.id,
                    load=True,
                    expected_s=decision.expected_s,
                    reason=decision.reason + "; a spare instance took it",
                )
                if inst.ready_at is not None:
                    self.policy.on_ready(inst, inst.ready_at - inst.started_at, now)
            else:
                decision = dataclasses.replace(decision, instance_id=inst.id)
        else:
            assert decision.instance_id is not None  # a RUN always names one
            plan = group.plan(decision.instance_id, request.model)
            if plan is None:
                raise PackerError(
                    f"policy {self.policy.name!r} routed {request.model!r} to instance "
                    f"{decision.instance_id}, which cannot take it now"
                )
            if plan.load != decision.load or plan.evict != decision.evict:
                raise PackerError(
                    f"policy {self.policy.name!r} expected load={decision.load} "
                    f"evict={decision.evict} on instance {decision.instance_id}, "
                    f"but the group plans load={plan.load} evict={plan.evict}"
                )
        assert decision.instance_id is not None
        assignment = group.assign(rid, request.model, decision.instance_id, now)
        self._attempts.pop(rid, None)
        loads = (request.model,) if assignment.load_now else ()
        return Routed(decision, loads, assignment.run_now)

    def instance_ready(self, instance_id: int, now: float) -> ReadyActions:
        """The instance's cold start finished (or a spare's); returns the loads to begin."""
        if self.group.is_spare(instance_id):
            return self.group.mark_ready(instance_id, now)  # the policy never sees spares
        actions = self.group.mark_ready(instance_id, now)
        inst = self.group.instance(instance_id)
        self.policy.on_ready(inst, now - inst.started_at, now)
        return actions

    def model_loaded(
        self, instance_id: int, model: str, now: float, *, load_s: float | None = None
    ) -> ReadyActions:
        """A load finished (it took ``load_s``, else the time since it began)."""
        inst = self.group.instance(instance_id)
        started = inst.load_started_at(model)
        actions = self.group.mark_loaded(instance_id, model, now)
        measured = load_s if load_s is not None else now - (started if started is not None else now)
        self.policy.on_loaded(inst, model, measured, now)
        return actions

    def request_done(self, request_id: int, now: float, *, exec_s: float | None = None) -> None:
        """A request finished; its inference took ``exec_s`` (else the time since it ran)."""
        request = self._requests.pop(request_id, None)
        if request is None:
            raise PackerError(f"request {request_id!r} is not in flight")
        inst, _model, running_since = self.group.complete(request_id, now)
        measured = exec_s if exec_s is not None else now - running_since
        self.policy.on_complete(request, inst, measured, now)

    def cancel(self, request_id: int) -> None:
        """Forget a waiting request (its deadline passed, or its client left)."""
        if request_id not in self._attempts:
            raise PackerError(f"request {request_id!r} is not waiting")
        del self._attempts[request_id]
        del self._requests[request_id]
        self.group.forget_waiting(request_id)

    def expire(self, now: float) -> tuple[int, ...]:
        """Stop the instances (and spares) whose keep-alive ran out; returns their ids."""
        stopped = []
        for inst in self.group.expired(now):
            spare = self.group.is_spare(inst.id)
            self.group.stop(inst.id, now)
            if not spare:
                self.policy.on_stopped(inst, now)
            stopped.append(inst.id)
        return tuple(stopped)

    def spares_to_start(self, now: float) -> tuple[Instance, ...]:
        """The spares to start now (the caller starts them and calls :meth:`instance_ready`
        when they are up): as many as the spare policy wants beyond those alive, within
        ``max_instances``."""
        if self.spare_policy is None:
            return ()
        shape, wanted = self.spare_policy.wanted(now)
        if shape is None:
            return ()
        have = sum(
            1
            for i in self.group.spares
            if i.memory_mb == shape.memory_mb and i.budget_mb == shape.budget_mb
        )
        out = []
        while have < wanted and self.group.spare_room():
            out.append(self.group.start_spare(shape, now))
            have += 1
        return tuple(out)

    def instance_failed(self, instance_id: int, now: float) -> tuple[RouteRequest, ...]:
        """The instance died; returns its unserved requests, to be routed again."""
        if self.group.is_spare(instance_id):
            self.group.stop(instance_id, now)
            return ()
        inst = self.group.instance(instance_id)
        lost = self.group.fail(instance_id, now)
        self.policy.on_stopped(inst, now)
        out = []
        for rid in lost:
            req = self._requests.pop(rid)
            self._attempts[rid] = req.attempt + 1
            self._requests[rid] = req
            out.append(req)
        return tuple(out)

    def next_expiry(self) -> float | None:
        return self.group.next_expiry()
