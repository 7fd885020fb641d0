"""The function group: a pool of instances that can each host any model of the group.

This is the state that the simulator and the live router share: its
:class:`~sealserve.packer.Instance` objects, their configuration, the requests waiting at the
router, and the meters.  An idle instance stops after the keep-alive period (scale to
zero).  The group meters GB-seconds as serverless platforms bill: configured memory x time
alive.

Policies read this state; only the :class:`FunctionGroup` methods (called by the router)
change it, and every change is checked: an instance never runs more requests than its
concurrency nor holds more model memory than its budget.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

from sealserve._evict import prune_lru_evictions
from sealserve.errors import PackerError
from sealserve.packer._config import GroupConfig
from sealserve.packer._decision import InstanceShape
from sealserve.packer._instance import Instance, _InFlight, _Phase, _Resident

__all__ = ["Assignment", "FunctionGroup", "LoadPlan", "ReadyActions"]


@dataclasses.dataclass(frozen=True, slots=True)
class LoadPlan:
    """What sending a request of a model to an instance implies.

    ``load``: this request makes the instance load the model; ``joins_load``: the model is
    already loading there and the request waits for it; ``evict``: models the load pushes out.
    """

    load: bool
    joins_load: bool
    evict: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """What the caller must do after an assignment: begin a load now, and/or run now."""

    instance_id: int
    load_now: bool
    run_now: bool
    evicted: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ReadyActions:
    """What becomes possible when an instance is ready or a model is loaded."""

    loads: tuple[str, ...]
    run: tuple[int, ...]


class FunctionGroup:
    """A pool of instances, its metering, and the requests waiting at its router."""

    def __init__(self, config: GroupConfig, *, model_memory_mb: Callable[[str], float]) -> None:
        if not isinstance(config, GroupConfig):
            raise TypeError(f"config must be a GroupConfig, got {type(config).__name__}")
        self.config = config
        self._model_mb = model_memory_mb
        self._next_id = 0
        self._alive: dict[int, Instance] = {}
        self._stopped: list[Instance] = []
        self._requests: dict[int, _InFlight] = {}
        self._waiting: dict[int, str] = {}
        #: Spare instances (see :mod:`._spares`): started, not among the group's instances
        #: (policies never see them) until :meth:`start` hands one to a request.
        self._spares: dict[int, Instance] = {}
        self._was_spare: list[Instance] = []
        self.spare_starts = 0
        self.spare_adoptions = 0
        self.cold_starts = 0
        self.model_loads = 0
        self.evictions = 0
        self.completed = 0

    # -- reading -----------------------------------------------------------------------------

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The alive instances, oldest first."""
        return tuple(self._alive.values())

    def __iter__(self) -> Iterator[Instance]:
        return iter(tuple(self._alive.values()))

    def instance(self, instance_id: int) -> Instance:
        try:
            return self._alive[instance_id]
        except KeyError:
            raise PackerError(f"instance {instance_id!r} is not alive in this group") from None

    @property
    def stopped(self) -> tuple[Instance, ...]:
        return tuple(self._stopped)

    def model_memory_mb(self, model: str) -> float:
        mb = float(self._model_mb(model))
        if not mb > 0 or math.isinf(mb):
            raise PackerError(f"model {model!r} has no usable memory size ({mb!r} MB)")
        return mb

    def count(self, function: str) -> int:
        return sum(1 for i in self._alive.values() if i.function == function)

    def can_start(self, shape: InstanceShape | None = None) -> bool:
        function = (shape or self.config.shape).function
        return self.count(function) < self.config.max_instances

    def fits(self, model: str, shape: InstanceShape | None = None) -> bool:
        """Whether ``model`` fits in an empty instance of ``shape`` (default: the group's)."""
        return self.model_memory_mb(model) <= (shape or self.config.shape).budget_mb

    def in_flight_of(self, model: str) -> int:
        return sum(1 for r in self._requests.values() if r.model == model)

    def instances_with(self, model: str) -> tuple[Instance, ...]:
        """Alive instances where ``model`` is loaded or loading."""
        return tuple(i for i in self._alive.values() if model in i._models)

    def waiting_count(self, model: str | None = None) -> int:
        if model is None:
            return len(self._waiting)
        return sum(1 for m in self._waiting.values() if m == model)

    def request_instance(self, request_id: int) -> int:
        try:
            return self._requests[request_id].instance_id
        except KeyError:
            raise PackerError(f"request {request_id!r} is not in flight") from None

    def plan(self, instance_id: int, model: str) -> LoadPlan | None:
        """What running ``model`` on the instance implies, or ``None`` if it cannot now.

        It cannot when the instance has no free slot, or the model does not fit in its budget
        even after evicting every resident model that no request is using, or the
        resident-model cap cannot be met that way.  It evicts least recently used first, but
        nothing that is not needed (:func:`sealserve._evict.prune_lru_evictions`).
        """
        inst = self._alive.get(instance_id)
        if inst is None or inst.free_slots <= 0:
            return None
        res = inst._models.get(model)
        if res is not None:
            return LoadPlan(load=False, joins_load=res.phase != "loaded", evict=())
        need = self.model_memory_mb(model)
        if need > inst.budget_mb:
            return None
        in_use = {r.model for r in inst._requests.values()}
        cap = self.config.max_models
        over_cap = 0 if cap is None else max(0, len(inst._models) + 1 - cap)
        idle = [
            (name, r.mb)
            for name, r in inst._models.items()  # least recently used first
            if r.phase == "loaded" and name not in in_use
        ]
        evict = prune_lru_evictions(idle, need - inst.free_mb, min_count=over_cap)
        if evict is None:
            return None
        return LoadPlan(load=True, joins_load=False, evict=evict)

    # -- changing ----------------------------------------------------------------------------

    @property
    def spares(self) -> tuple[Instance, ...]:
        """The spare instances (started ahead of demand, holding no model), oldest first."""
        return tuple(self._spares.values())

    def is_spare(self, instance_id: int) -> bool:
        return instance_id in self._spares

    def spare_room(self) -> bool:
        """Whether one more spare stays within ``max_instances`` (all instances counted) and
        still leaves room for one more instance: a spare of one size never stops a start of
        another."""
        return len(self._alive) + len(self._spares) + 1 < self.config.max_instances

    def has_spare_for(self, shape: InstanceShape) -> bool:
        """Whether a spare of ``shape``'s memory and budget would take a start of it."""
        return any(
            i.memory_mb == shape.memory_mb and i.budget_mb == shape.budget_mb
            for i in self._spares.values()
        )

    def start_spare(self, shape: InstanceShape, now: float) -> Instance:
        """Begin the start of a spare of ``shape`` (its memory and budget)."""
        if not self.spare_room():
            raise PackerError("no room for a spare within max_instances")
        inst = Instance(
            instance_id=self._next_id, shape=shape, concurrency=self.config.concurrency, now=now
        )
        self._next_id += 1
        self._spares[inst.id] = inst
        self._was_spare.append(inst)
        self.spare_starts += 1
        return inst

    def _adopt(self, shape: InstanceShape, now: float) -> Instance | None:
        """A spare of ``shape``'s memory and budget, taken into the group (a ready one first,
        else the one that has started longest ago)."""
        fitting = [
            i
            for i in self._spares.values()
            if i.memory_mb == shape.memory_mb and i.budget_mb == shape.budget_mb
        ]  # the same test as has_spare_for
        if not fitting:
            return None
        inst = min(fitting, key=lambda i: (not i.is_ready, i.started_at))
        del self._spares[inst.id]
        inst.function = shape.function
        inst.adopted_at = now
        inst.last_used = now
        self._alive[inst.id] = inst
        self.spare_adoptions += 1
        return inst

    def start(self, shape: InstanceShape | None, now: float) -> Instance:
        """Begin a cold start of a new instance (of ``shape``, else the group's), or take a
        spare of that size (its :attr:`Instance.adopted_at` is then set, and it may already
        be ready).

        An instance of the group's own function takes one of the group's shapes
        (:attr:`GroupConfig.shapes`); other functions (``dedicated``'s) take any shape.
        """
        shape = shape or self.config.shape
        if shape.function == self.config.name and shape not in self.config.shapes:
            sizes = ", ".join(f"{s.memory_mb} MB/{s.budget_mb:g} MB" for s in self.config.shapes)
            raise PackerError(
                f"shape {shape.memory_mb} MB with a {shape.budget_mb:g} MB budget is not one of "
                f"function {shape.function!r}'s shapes ({sizes}); add it to sizes_mb"
            )
        if not self.can_start(shape):
            raise PackerError(
                f"function {shape.function!r} already has max_instances="
                f"{self.config.max_instances} instances"
            )
        adopted = self._adopt(shape, now)
        if adopted is not None:
            self.cold_starts += 1  # an instance joined the group for a request, as a start does
            return adopted
        inst = Instance(
            instance_id=self._next_id, shape=shape, concurrency=self.config.concurrency, now=now
        )
        self._next_id += 1
        self._alive[inst.id] = inst
        self.cold_starts += 1
        return inst

    def assign(self, request_id: int, model: str, instance_id: int, now: float) -> Assignment:
        """Put a request on an instance; reserve (and evict) memory when it needs a load."""
        if request_id in self._requests:
            raise PackerError(f"request {request_id!r} is already in flight")
        inst = self.instance(instance_id)
        plan = self.plan(instance_id, model)
        if plan is None:
            raise PackerError(
                f"instance {instance_id} cannot take a request of {model!r} now "
                f"({inst.in_flight}/{inst.concurrency} slots, {inst.free_mb:.0f} MB free)"
            )
        for name in plan.evict:
            del inst._models[name]
        self.evictions += len(plan.evict)
        load_now = False
        if plan.load:
            phase: _Phase = "loading" if inst.is_ready else "planned"
            inst._models[model] = _Resident(self.model_memory_mb(model), phase, now)
            self.model_loads += 1
            inst.loads += 1
            load_now = phase == "loading"
        else:
            inst._models.move_to_end(model)
        req = _InFlight(request_id, model, instance_id, now)
        run_now = inst.is_ready and inst._models[model].phase == "loaded"
        if run_now:
            req.running_since = now
        inst._requests[request_id] = req
        self._requests[request_id] = req
        self._waiting.pop(request_id, None)
        inst.last_used = now
        return Assignment(instance_id, load_now, run_now, plan.evict)

    def mark_ready(self, instance_id: int, now: float) -> ReadyActions:
        """The instance finished its cold start: its planned loads begin now."""
        spare = self._spares.get(instance_id)
        if spare is not None:
            if spare.ready_at is not None:
                raise PackerError(f"instance {instance_id} is already ready")
            spare.ready_at = now
            spare.last_used = now
            return ReadyActions(loads=(), run=())
        inst = self.instance(instance_id)
        if inst.ready_at is not None:
            raise PackerError(f"instance {instance_id} is already ready")
        inst.ready_at = now
        loads = []
        for name, res in inst._models.items():
            if res.phase == "planned":
                res.phase = "loading"
                res.since = now
                loads.append(name)
        return ReadyActions(loads=tuple(loads), run=())

    def mark_loaded(self, instance_id: int, model: str, now: float) -> ReadyActions:
        """The load of ``model`` finished: the requests waiting for it run now."""
        inst = self.instance(instance_id)
        res = inst._models.get(model)
        if res is None or res.phase != "loading":
            raise PackerError(f"model {model!r} is not loading on instance {instance_id}")
        res.phase = "loaded"
        res.since = now
        run = []
        for req in inst._requests.values():
            if req.model == model and req.running_since is None:
                req.running_since = now
                run.append(req.request_id)
        return ReadyActions(loads=(), run=tuple(run))

    def complete(self, request_id: int, now: float) -> tuple[Instance, str, float]:
        """A request finished: free its slot.  Returns its instance, model and run start."""
        req = self._requests.get(request_id)
        if req is None:
            raise PackerError(f"request {request_id!r} is not in flight")
        if req.running_since is None:
            raise PackerError(f"request {request_id!r} cannot complete: it has not run yet")
        del self._requests[request_id]
        inst = self._alive[req.instance_id]
        del inst._requests[request_id]
        if req.model in inst._models:
            inst._models.move_to_end(req.model)
        inst.last_used = now
        inst.served += 1
        self.completed += 1
        return inst, req.model, req.running_since

    def expired(self, now: float) -> tuple[Instance, ...]:
        """Ready, idle instances (spares too) whose keep-alive has run out by ``now``."""
        keep = self.config.keep_alive_s
        return tuple(
            i
            for i in (*self._alive.values(), *self._spares.values())
            if i.is_ready and not i._requests and i.last_used + keep <= now + 1e-9
        )

    def next_expiry(self) -> float | None:
        """When the next idle instance's keep-alive runs out, if any is idle."""
        keep = self.config.keep_alive_s
        times = [
            i.last_used + keep
            for i in (*self._alive.values(), *self._spares.values())
            if i.is_ready and not i._requests
        ]
        return min(times) if times else None

    def stop(self, instance_id: int, now: float) -> Instance:
        """Scale an idle instance (or a spare) to zero (its resident models go with it)."""
        spare = self._spares.pop(instance_id, None)
        if spare is not None:
            spare.stopped_at = max(now, spare.started_at)
            self._stopped.append(spare)
            return spare
        inst = self.instance(instance_id)
        if inst._requests:
            raise PackerError(f"instance {instance_id} has requests in flight; it cannot stop")
        return self._retire(inst, now)

    def fail(self, instance_id: int, now: float) -> tuple[int, ...]:
        """The instance died: it is gone, and its in-flight requests are returned unserved."""
        inst = self.instance(instance_id)
        lost = tuple(inst._requests)
        for rid in lost:
            del self._requests[rid]
        inst._requests.clear()
        self._retire(inst, now)
        return lost

    def _retire(self, inst: Instance, now: float) -> Instance:
        inst.stopped_at = max(now, inst.started_at)
        inst._models.clear()
        del self._alive[inst.id]
        self._stopped.append(inst)
        return inst

    def note_waiting(self, request_id: int, model: str) -> None:
        self._waiting[request_id] = model

    def forget_waiting(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)

    # -- metering ----------------------------------------------------------------------------

    def gb_seconds(self, now: float) -> float:
        """GB-seconds billed so far: every instance's configured memory x time alive (spares
        included: they are billed from their start)."""
        return (
            sum(i.gb_seconds(now) for i in self._stopped)
            + sum(i.gb_seconds(now) for i in self._alive.values())
            + sum(i.gb_seconds(now) for i in self._spares.values())
        )

    def spare_gb_seconds(self, now: float) -> float:
        """The GB-seconds of instances while they were spares (until taken or stopped)."""
        total = 0.0
        for inst in self._was_spare:
            end = inst.adopted_at if inst.adopted_at is not None else inst.stopped_at
            end = now if end is None else end
            total += inst.memory_mb / 1024.0 * max(0.0, end - inst.started_at)
        return total

    def intervals(self) -> tuple[tuple[int, float, float | None], ...]:
        """Every instance as (memory MB, started at, stopped at or ``None``), oldest first."""
        every = sorted(
            [*self._stopped, *self._alive.values(), *self._spares.values()], key=lambda i: i.id
        )
        return tuple((i.memory_mb, i.started_at, i.stopped_at) for i in every)
