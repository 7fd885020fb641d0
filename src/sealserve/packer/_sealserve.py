"""``sealserve``: routing by expected completion time, using what our runtime adds.

Our runtime keeps several models resident within its memory budget and serves several
requests at once, so an instance is not "switched" from one model to another: a model is
loaded beside the others, and only the least recently used models that no request is using
are evicted to make room.  For each request the policy prices every option with what it has
measured (per-model inference and load times and the cold start, starting from the cost model;
per-model arrivals) and takes the cheapest:

* run on an instance that holds the model and has a free slot: the inference time;
* join a load of the model already under way: the rest of the load, then the inference;
* load the model on an instance with a free slot (ready or starting): the load and the
  inference, plus the expected cost of what the load evicts: for each evicted model not
  resident elsewhere, its load time x the chance it is requested again within the horizon
  (one keep-alive by default), read from its own recent idle gaps;
* wait for a slot on a full instance: the time until the earliest slot frees, the requests
  already waiting ahead, then the load (if needed) and the inference;
* a cold start: the cold start, the load and the inference; considered only while fewer
  instances are alive than the predicted load needs (slots by Little's law, memory by the
  expected working set), or when nothing alive can take the request.  The new instance takes
  the smallest size that holds the model and the part of the expected working set the alive
  instances leave out, so that the models that come next do not evict each other from a
  small instance.

Instances beyond the largest need seen within the last keep-alive are surplus: running there
is charged one load, so a model moves to a core instance once and the surplus one drains.  Ties
go to the busiest instance, then the fullest in memory that still fits (sporadic models are
packed by memory), then the most recently used.  Every decision says why, with the runner-up.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Protocol

from sealserve.errors import PackerError
from sealserve.packer._capacity import (
    Need,
    NeedWindow,
    Sized,
    core_of,
    resize_of,
    shape_to_start,
)
from sealserve.packer._decision import Decision, RouteRequest
from sealserve.packer._group import FunctionGroup
from sealserve.packer._instance import Instance
from sealserve.packer._policy import Policy
from sealserve.packer._stats import LoadStats

__all__ = ["CostPriors", "SealservePolicy"]

_EPSILON_S = 1e-3


class CostPriors(Protocol):
    """Measured costs to start from (a :class:`~sealserve.packer.CostModel` is one)."""

    @property
    def cold_start_s(self) -> float: ...

    def infer_s(self, model: str) -> float: ...

    def load_s(self, model: str) -> float: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Option:
    expected: float
    evict_cost: float
    drain_cost: float
    rank: tuple[float, ...]
    label: str
    decision: Decision
    #: The part of a cold start shared with the reloads it is expected to end.
    shared: float = 0.0

    @property
    def score(self) -> float:
        return self.expected + self.evict_cost + self.drain_cost - self.shared


class SealservePolicy(Policy):
    """Expected-completion-time routing over resident models, loads, queues and cold starts."""

    name = "sealserve"
    resident_limit = None

    def __init__(
        self,
        *,
        priors: CostPriors | None = None,
        horizon_s: float | None = None,
        short_window_s: float = 30.0,
        long_window_s: float = 600.0,
        default_infer_s: float = 0.1,
        default_load_s: float = 1.0,
        default_cold_start_s: float = 2.0,
    ) -> None:
        if horizon_s is not None and (not horizon_s > 0 or math.isinf(horizon_s)):
            raise ValueError(f"horizon_s must be a finite number > 0 or None, got {horizon_s!r}")
        self.horizon_s = horizon_s
        self._priors = priors
        self._needs: NeedWindow | None = None
        self._misses: collections.deque[float] = collections.deque()
        self._evicted_at: dict[str, float] = {}
        if priors is not None:
            self.stats = LoadStats(
                prior_exec_s=priors.infer_s,
                prior_load_s=priors.load_s,
                prior_cold_start_s=priors.cold_start_s,
                short_window_s=short_window_s,
                long_window_s=long_window_s,
            )
        else:
            self.stats = LoadStats(
                prior_exec_s=lambda _m: default_infer_s,
                prior_load_s=lambda _m: default_load_s,
                prior_cold_start_s=default_cold_start_s,
                short_window_s=short_window_s,
                long_window_s=long_window_s,
            )

    # -- routing ------------------------------------------------------------------------------

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        model = request.model
        shapes = group.config.shapes
        model_mb = group.model_memory_mb(model)
        if not any(group.fits(model, shape) for shape in shapes):
            raise PackerError(
                f"model {model!r} needs {model_mb:.0f} MB, more than the largest instance "
                f"budget of {shapes[-1].budget_mb:.0f} MB; raise the budget or add a size"
            )
        infer = self.stats.peek(model).exec_s.value
        load = self.stats.peek(model).load_s.value
        options: list[_Option] = []
        full: list[Instance] = []
        need = self.need(group, model, now)
        ours = [i for i in group if i.function == group.config.name]
        stable = self._stabilized(need, group, now)
        core = core_of(
            ours,
            stable,
            drain_cost=lambda inst: self._drain_cost(inst, group, now),
        )
        resize = None
        if all(i.is_ready for i in ours):  # one change at a time
            resize = resize_of(
                ours,
                stable,
                shapes,
                largest_model_mb=lambda inst: self._largest_model_mb(inst, group, now),
                drain_cost=lambda inst: self._drain_cost(inst, group, now),
            )
        if resize is not None:
            core = resize.kept
        on_core = any(model in i.models for i in ours if i.id in core)
        for inst in group:
            plan = group.plan(inst.id, model)
            if plan is None:
                if inst.free_slots == 0:
                    full.append(inst)
                continue
            ready_at = self._ready_eta(inst, now)
            evict_cost = drain_cost = 0.0
            if plan.load:
                model_at = ready_at + load
                evict_cost = self._eviction_penalty(plan.evict, inst, group, now)
                label = f"load on i{inst.id}"
            elif plan.joins_load:
                model_at = self._load_eta(inst, model, now)
                label = f"join the load on i{inst.id}"
            else:
                model_at = ready_at
                label = f"resident on i{inst.id}"
            if not inst.is_ready:
                label += " (starting)"
            if inst.id not in core:
                # A surplus instance: using it keeps it alive; moving the model to a core
                # instance costs one load and lets this one reach its keep-alive and stop.
                # Once the model is resident or loading on the core, the move is paid for:
                # until its load is done, the model's requests still run here.
                drain_cost = (0.0 if on_core else load) + _EPSILON_S
                label += " (surplus)"
            expected = model_at - now + infer
            free_after = inst.free_mb - (group.model_memory_mb(model) if plan.load else 0.0)
            free_after += sum(group.model_memory_mb(e) for e in plan.evict)
            rank = (0.0, -inst.in_flight, free_after, -inst.last_used, inst.id)
            decision = Decision.run(
                model, inst.id, load=plan.load, evict=plan.evict, expected_s=expected, reason=""
            )
            options.append(_Option(expected, evict_cost, drain_cost, rank, label, decision))
        wait = self._wait_option(request, full, group, now, infer, load)
        if wait is not None:
            options.append(wait)
        alive_mb = sum(i.budget_mb for i in ours)
        short = not need.covered_by(ours)
        shape = shape_to_start(shapes, model_mb=model_mb, shortfall_mb=need.memory_mb - alive_mb)
        resizing = resize is not None and group.fits(model, resize.shape)
        if resize is not None and resizing:
            shape = resize.shape
        if shape is not None and group.can_start(shape) and (short or resizing or not options):
            # Start only when the predicted load needs more memory or slots than are alive, or
            # a smaller instance can replace a core one, or nothing alive can take the request:
            # an instance costs at least a keep-alive of GB-seconds.  Its shape is the smallest
            # that holds the model and the expected working set the alive ones leave out.
            # While the group is short, models evicted lately come back and evict others;
            # one cold start ends that run of reloads, so past the first its cost is shared.
            # A resize's cold start is what it takes to stop paying for the larger instance.
            cold = self.stats.cold_start_s.value
            expected = cold + load + infer
            misses = self._recent_misses(group, now)
            shared = cold if resizing else cold - cold / max(1, misses)
            decision = Decision.start(model, shape=shape, expected_s=expected, reason="")
            if resize is not None and resizing:
                replaced = ", ".join(f"i{i}" for i in sorted(resize.replaced))
                why = (
                    f"cold start of a {shape.memory_mb} MB instance to replace {replaced} "
                    f"({resize.saving_mb} MB less for {stable.memory_mb:.0f} MB of expected "
                    "working set lately)"
                )
            else:
                why = (
                    f"cold start of a {shape.memory_mb} MB instance ({alive_mb:.0f} of "
                    f"{need.memory_mb:.0f} MB of expected working set and {len(ours)} of "
                    f"{need.instances} instances for slots alive"
                )
                if misses:
                    plural = "s" if misses > 1 else ""
                    why += f", {misses} reload{plural} of evicted models lately"
                why += ")"
            options.append(_Option(expected, 0.0, 0.0, (2.0,), why, decision, shared))
        if not options:
            return Decision.wait(
                model, reason="no slot, nothing to wait for, and the group is at its max"
            )
        options.sort(key=lambda o: (round(o.score, 9), o.rank))
        best = options[0]
        why = f"{best.label}: expected {_ms(best.expected)}"
        if best.evict_cost > 0:
            why += f" + eviction cost {_ms(best.evict_cost)}"
        if best.shared > 0:
            with_what = "paid by the resize" if resizing else "shared with recent reloads"
            why += f" - {_ms(best.shared)} {with_what}"
        if best.drain_cost > 0:
            why += f" + drain cost {_ms(best.drain_cost)}"
        if len(options) > 1:
            runner = options[1]
            why += f"; next best {runner.label}: {_ms(runner.score)}"
        return dataclasses.replace(best.decision, reason=why)

    def need(self, group: FunctionGroup, model: str, now: float) -> Need:
        """What the predicted load needs now: memory for models and instances for slots.

        Slots: the expected busy slots (Little's law: the sum over models of arrival rate x
        inference time), doubled for bursts, plus one; and never fewer than the requests in
        flight and waiting now, plus this one.  Memory: the expected working set, the sum over
        models of memory x the chance of a request within the horizon (this request's model
        counts fully).
        """
        return self._need(group, model, now, pending=1)

    def _need(self, group: FunctionGroup, model: str, now: float, *, pending: int) -> Need:
        """:meth:`need`, counting ``pending`` requests besides those the group holds."""
        horizon = self._horizon(group)
        busy = 0.0
        working_set = group.model_memory_mb(model)
        for name in self.stats.known():
            stats = self.stats.peek(name)
            rate = stats.rate(now)
            busy += rate * stats.exec_s.value
            if name != model:
                chance = stats.chance_within(horizon, now)
                working_set += chance * group.model_memory_mb(name)
        config = group.config
        ours = [i for i in group if i.function == config.name]
        in_flight = sum(i.in_flight for i in ours) + group.waiting_count() + pending
        slots = max(2.0 * busy + 1.0, float(in_flight))
        return Need(working_set, max(1, math.ceil(slots / config.concurrency - 1e-9)))

    def target_instances(self, group: FunctionGroup, model: str, now: float) -> int:
        """How many instances of the group's own shape the predicted load needs (:meth:`need`)."""
        need = self.need(group, model, now)
        by_memory = math.ceil(need.memory_mb / group.config.budget_mb - 1e-9)
        return max(1, need.instances, by_memory)

    def _stabilized(self, need: Need, group: FunctionGroup, now: float) -> Need:
        """The largest need seen within the last keep-alive (:class:`NeedWindow`)."""
        if self._needs is None:
            return need
        return self._needs.largest(need, now)

    def _recent_misses(self, group: FunctionGroup, now: float) -> int:
        """Loads, within the last horizon, of models that had been evicted within it."""
        horizon = self._horizon(group)
        return sum(1 for at in self._misses if at >= now - horizon)

    def _horizon(self, group: FunctionGroup) -> float:
        return self.horizon_s if self.horizon_s is not None else group.config.keep_alive_s

    def _ready_eta(self, inst: Instance, now: float) -> float:
        if inst.is_ready:
            return now
        return max(now, inst.started_at + self.stats.cold_start_s.value)

    def _load_eta(self, inst: Instance, model: str, now: float) -> float:
        started = inst.load_started_at(model)
        load = self.stats.peek(model).load_s.value
        if started is None:
            return self._ready_eta(inst, now) + load
        return max(now, started + load)

    def _eviction_penalty(
        self, evict: tuple[str, ...], inst: Instance, group: FunctionGroup, now: float
    ) -> float:
        horizon = self._horizon(group)
        penalty = 0.0
        for name in evict:
            if any(i.id != inst.id and name in i.models for i in group):
                continue
            stats = self.stats.peek(name)
            penalty += stats.chance_within(horizon, now) * stats.load_s.value
        return penalty

    def _largest_model_mb(self, inst: Sized, group: FunctionGroup, now: float) -> float:
        """The largest model on ``inst`` that is more likely than not to be requested within
        the horizon (a resize must leave room for it)."""
        assert isinstance(inst, Instance)
        horizon = self._horizon(group)
        likely = (m for m in inst.models if self.stats.peek(m).chance_within(horizon, now) >= 0.5)
        return max((group.model_memory_mb(m) for m in likely), default=0.0)

    def _drain_cost(self, inst: Sized, group: FunctionGroup, now: float) -> float:
        """What moving ``inst``'s models elsewhere is expected to cost: for each model not
        resident elsewhere, its load time x the chance it is requested within the horizon."""
        assert isinstance(inst, Instance)
        return self._eviction_penalty(inst.models, inst, group, now)

    def _free_eta(self, inst: Instance, now: float) -> float:
        """When the instance's earliest in-flight request is expected to finish."""
        earliest = math.inf
        for rid in inst.request_ids():
            req_model = inst.request_model(rid)
            exec_s = self.stats.peek(req_model).exec_s.value
            since = inst.running_since(rid)
            if since is not None:
                end = since + exec_s
            elif inst.holds(req_model):
                end = self._ready_eta(inst, now) + exec_s
            else:
                end = self._load_eta(inst, req_model, now) + exec_s
            earliest = min(earliest, max(now, end))
        return now if math.isinf(earliest) else earliest

    def _wait_option(
        self,
        request: RouteRequest,
        full: list[Instance],
        group: FunctionGroup,
        now: float,
        infer: float,
        load: float,
    ) -> _Option | None:
        if not full:
            return None
        model = request.model
        holders = [i for i in full if model in i.models]
        pool = holders or full
        slots = sum(i.concurrency for i in pool)
        ahead = group.waiting_count(model) - (1 if request.attempt > 0 else 0)
        first = min(pool, key=lambda i: (self._free_eta(i, now), i.id))
        free_at = self._free_eta(first, now)
        queue = max(0, ahead) * infer / slots
        expected = free_at - now + queue + infer + (0.0 if holders else load)
        label = f"wait for a slot on i{first.id}" + (" (holds the model)" if holders else "")
        decision = Decision.wait(model, expected_s=expected, reason="")
        return _Option(expected, 0.0, 0.0, (1.0,), label, decision)

    # -- learning ------------------------------------------------------------------------------

    def on_arrival(self, request: RouteRequest, now: float) -> None:
        self.stats.model(request.model).arrived(now)

    def on_routed(
        self, request: RouteRequest, decision: Decision, group: FunctionGroup, now: float
    ) -> None:
        if self._needs is None:
            self._needs = NeedWindow(window_s=group.config.keep_alive_s)
        # The need the decision was made on: the group now holds the request (in flight, or
        # waiting), which route counted as one more; a retried request route also found
        # waiting, so it counted it twice.
        pending = 1 if request.attempt > 0 else 0
        self._needs.observe(self._need(group, request.model, now, pending=pending), now)
        horizon = self._horizon(group)
        while self._misses and self._misses[0] < now - horizon:
            self._misses.popleft()
        evicted_at = self._evicted_at.pop(request.model, None)
        if decision.load and evicted_at is not None and evicted_at >= now - horizon:
            self._misses.append(now)
        for name in decision.evict:
            self._evicted_at[name] = now

    def on_ready(self, instance: Instance, cold_start_s: float, now: float) -> None:
        self.stats.cold_start_s.observe(cold_start_s)

    def on_loaded(self, instance: Instance, model: str, load_s: float, now: float) -> None:
        self.stats.model(model).load_s.observe(load_s)

    def on_complete(
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        stats = self.stats.model(request.model)
        stats.exec_s.observe(exec_s)
        stats.last_done = now

    def options(self) -> dict[str, Any]:
        return {
            "horizon_s": self.horizon_s,
            "short_window_s": self.stats.short_window_s,
            "long_window_s": self.stats.long_window_s,
            "priors": self._priors is not None,
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
