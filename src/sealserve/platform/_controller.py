"""The platform's decisions: FnPacker's router, keep-alive, caps, health and metering.

:class:`PlatformController` is pure: it does no I/O, never sleeps and never reads a clock.
The driver tells it what happened, with the time (``submit``, ``started``, ``loaded``,
``finished``, ``health``, ``tick``...), and gets back the actions to carry out
(:mod:`._actions`).  So the keep-alive, scale to zero, the caps and the meter are tested with a
manual clock, and another backend reuses every decision.

A request's life::

    submit ──▶ WAITING (held at the router) ──▶ ASSIGNED (on an instance: waiting for its
               cold start or its model's load) ──▶ RUNNING (sent: RunRequest) ──▶ finished

Routing is FnPacker's (:class:`~sealserve.packer.Router`, the objects the simulator runs):
a decision runs the request on an instance, starts one, or holds it.  A load is its own call
(``LoadModel``, with the keys of the user whose request caused it): the requests that wait for
it run when it is done, and the policy learns the load's measured time.  A load that fails
for a reason that holds for every request (a model that is not stored or does not fit) fails
the requests waiting for it; one refused for its user (no grant) fails that user's; otherwise
the waiting requests run and try for themselves.

Instances stop when idle past the keep-alive (``tick``), and are replaced when unhealthy:
their unserved requests are routed again (at most ``max_reroutes`` times), the ones in flight
fail by themselves, retryably.  The meter bills every instance its configured memory from
spawn to stop: the size of its shape (``StartInstance.memory_mb``), which is the platform's
own instance size or, under the ``sealserve`` policy, one of ``sizes_mb``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

from sealserve.errors import (
    AccessDenied,
    CapacityExhausted,
    DeadlineExceeded,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    ModelNotStored,
    PlatformError,
    SealserveError,
    StoreIntegrityError,
)
from sealserve.packer import (
    Decision,
    DecisionKind,
    Instance,
    Policy,
    Router,
    RouteRequest,
    SpareConfig,
)
from sealserve.platform._actions import (
    Action,
    DecisionRecord,
    LoadModel,
    Reject,
    RunRequest,
    StartInstance,
    StopInstance,
)
from sealserve.platform._backend import InstanceHealth, InstanceInfo
from sealserve.platform._capped import CappedPolicy
from sealserve.platform._config import PlatformConfig
from sealserve.platform._meter import CostMeter
from sealserve.platform._stats import InstanceStats, PlatformStats
from sealserve.platform._tracking import InstanceRecord, LoadInFlight, RequestPhase, Tracked

__all__ = ["ControllerCounters", "PlatformController", "RequestPhase", "RouterCore"]

#: A duration the platform did not measure (the capped policy does not pass it on).
_NOT_MEASURED = -1.0


@dataclasses.dataclass(slots=True)
class ControllerCounters:
    """What the platform did, since it started."""

    submitted: int = 0
    served: int = 0
    failed: int = 0
    rejected: int = 0
    cold_starts: int = 0
    failed_starts: int = 0
    model_loads: int = 0
    failed_loads: int = 0
    evictions: int = 0
    scaled_to_zero: int = 0
    instances_replaced: int = 0
    rerouted: int = 0
    runtime_failures: int = 0
    #: Spare instances started ahead of demand, and how many a request took.
    spare_starts: int = 0
    spares_taken: int = 0

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class RouterCore:
    """What the local platform's controller and Ray Serve's replica packer share: FnPacker's
    router around the policy capped at ``config.max_instances``, the cost meter, the counters
    and the log of the last decisions.

    ``sizes=False``: every instance has ``config.instance_memory_mb`` (see
    :meth:`PlatformConfig.group_config`).  ``spares=True``: the router keeps up to
    ``config.spares`` spare instances (:mod:`sealserve.packer._spares`); the caller starts them.
    """

    def __init__(
        self,
        config: PlatformConfig,
        *,
        policy: Policy,
        model_memory_mb: Callable[[str], float],
        sizes: bool = True,
        spares: bool = False,
    ) -> None:
        if not isinstance(config, PlatformConfig):
            raise TypeError(f"config must be a PlatformConfig, got {type(config).__name__}")
        self.config = config
        self.router = Router(
            CappedPolicy(policy, max_instances=config.max_instances),
            config.group_config(sizes=sizes),
            model_memory_mb=model_memory_mb,
            history=config.decision_history,
            spares=SpareConfig(max_spares=config.spares) if spares and config.spares else None,
        )
        self.meter = CostMeter()
        self.counters = ControllerCounters()
        self.decisions: collections.deque[DecisionRecord] = collections.deque(
            maxlen=config.decision_history
        )
        self.decision_counts = {kind.value: 0 for kind in DecisionKind}

    @property
    def policy_name(self) -> str:
        return self.router.policy.name

    def _instance_stats(
        self,
        inst: Instance,
        now: float,
        *,
        spawned_at: float,
        runtime_restarting: bool = False,
        url: str | None = None,
        pid: int | None = None,
        runtime_pid: int | None = None,
        resident_mb: float | None = None,
    ) -> InstanceStats:
        """Instance ``inst`` at ``now`` as the router and the meter see it, with what the
        platform knows of its process."""
        return InstanceStats(
            instance_id=inst.id,
            state=inst.state.value,
            memory_mb=inst.memory_mb,
            budget_mb=inst.budget_mb,
            models=inst.loaded_models,
            loading=tuple(m for m in inst.models if inst.is_loading(m)),
            in_flight=inst.in_flight,
            served=inst.served,
            age_s=max(0.0, now - spawned_at),
            gb_s=self.meter.gb_seconds(now, inst.id),
            runtime_restarting=runtime_restarting,
            url=url,
            pid=pid,
            runtime_pid=runtime_pid,
            resident_mb=resident_mb,
        )

    def _log_decision(self, rid: int, decision: Decision, waits: int, now: float) -> DecisionRecord:
        record = DecisionRecord.of(rid, decision, waits=waits, at=now)
        self.decisions.append(record)
        self.decision_counts[record.kind] += 1
        return record


class PlatformController(RouterCore):
    """The local platform's pure decisions (see the module docstring).

    ``model_memory_mb`` gives the memory a model takes in a runtime's budget (what the router
    packs by); ``policy`` is a fresh FnPacker policy (``make_policy(config.policy)``).
    """

    def __init__(
        self,
        config: PlatformConfig,
        *,
        policy: Policy,
        model_memory_mb: Callable[[str], float],
    ) -> None:
        super().__init__(config, policy=policy, model_memory_mb=model_memory_mb, spares=True)
        self._requests: dict[int, Tracked] = {}
        self._waiting: dict[int, None] = {}
        self._loads: dict[tuple[int, str], LoadInFlight] = {}
        self._instances: dict[int, InstanceRecord] = {}

    # -- reading -------------------------------------------------------------------------------

    def phase(self, request_id: int) -> RequestPhase | None:
        tracked = self._requests.get(request_id)
        return None if tracked is None else tracked.phase

    def decision_for(self, request_id: int) -> DecisionRecord | None:
        """The decision that placed the request (not a WAIT), once there is one."""
        tracked = self._requests.get(request_id)
        return None if tracked is None else tracked.decision

    def waited_for_cold_start(self, request_id: int) -> bool:
        tracked = self._requests.get(request_id)
        return tracked is not None and tracked.cold_start

    @property
    def waiting(self) -> int:
        """Requests held at the router."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not finished (waiting, assigned or running)."""
        return len(self._requests)

    def instance_ids(self) -> tuple[int, ...]:
        """Instances alive (starting or ready), oldest first."""
        return tuple(self._instances)

    def memory_mb(self, instance_id: int) -> int | None:
        """The size an alive instance (a spare too) was started at; ``None`` if it is gone."""
        record = self._instances.get(instance_id)
        return None if record is None else record.memory_mb

    def ready_instance_ids(self) -> tuple[int, ...]:
        return tuple(i for i, r in self._instances.items() if r.ready_at is not None)

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` next has something to do (a keep-alive, a deadline, a retry)."""
        times = [t for t in (self.router.next_expiry(),) if t is not None]
        for tracked in self._requests.values():
            if tracked.phase is not RequestPhase.RUNNING and not tracked.abandoned:
                times.append(tracked.deadline)
            if tracked.retry_at is not None:
                times.append(tracked.retry_at)
        return min(times) if times else None

    def snapshot(
        self, now: float, *, describe: Callable[[int], InstanceInfo | None] | None = None
    ) -> PlatformStats:
        """The platform's state at ``now`` (``describe`` adds what the backend knows)."""
        instances = []
        for inst in self.router.group.instances:
            record = self._instances.get(inst.id)
            if record is None:
                continue
            info = describe(inst.id) if describe is not None else None
            instances.append(
                self._instance_stats(
                    inst,
                    now,
                    spawned_at=record.spawned_at,
                    runtime_restarting=record.runtime_restarting,
                    url=None if info is None else info.url,
                    pid=None if info is None else info.pid,
                    runtime_pid=None if info is None else info.runtime_pid,
                    resident_mb=None if info is None else info.resident_mb,
                )
            )
        config = dataclasses.asdict(self.config)
        config["memory_budget_mb"] = self.config.model_budget_mb
        config["reserve_mb"] = self.config.reserve_mb
        config["shapes"] = [
            {"memory_mb": s.memory_mb, "budget_mb": s.budget_mb}
            for s in self.router.group.config.shapes
        ]
        return PlatformStats(
            policy=self.policy_name,
            instances=tuple(instances),
            waiting=self.waiting,
            in_flight=self.in_flight,
            counters=self.counters.to_json(),
            gb_seconds=self.meter.gb_seconds(now),
            spare_gb_seconds=self.meter.spare_gb_seconds(now),
            instance_seconds=self.meter.instance_seconds(now),
            decisions=dict(self.decision_counts),
            recent=tuple(self.decisions),
            config=config,
        )

    # -- events --------------------------------------------------------------------------------

    def submit(
        self, request_id: int, *, model: str, user_id: str, deadline: float, now: float
    ) -> list[Action]:
        """A request arrived.  Raises :class:`~sealserve.errors.CapacityExhausted` when it
        would wait and ``max_waiting`` requests already do, and
        :class:`~sealserve.errors.MemoryBudgetExceeded` for a model no instance can hold."""
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already submitted")
        group = self.router.group
        shapes = group.config.shapes
        if not any(group.fits(model, shape) for shape in shapes):
            need = group.model_memory_mb(model)
            largest = shapes[-1]
            raise MemoryBudgetExceeded(
                f"model {model} needs {need:.0f} MB of runtime memory, more than the budget "
                f"of the largest instance ({largest.budget_mb:.0f} MB of {largest.memory_mb} "
                "MB); raise platform.instance_memory_mb"
                + (" or add a larger size to platform.sizes_mb" if len(shapes) > 1 else "")
            )
        tracked = Tracked(request_id, model, user_id, arrived_at=now, deadline=deadline)
        self._requests[request_id] = tracked
        actions: list[Action] = []
        self._route(tracked, now, actions)
        if tracked.phase is RequestPhase.WAITING and len(self._waiting) > self.config.max_waiting:
            self._forget_waiting(tracked)
            self.counters.rejected += 1
            raise CapacityExhausted(
                f"{self.config.max_waiting} requests already wait for an instance; retry later"
            )
        self.counters.submitted += 1
        return actions

    def started(self, instance_id: int, now: float) -> list[Action]:
        """The instance's cold start finished: it serves."""
        record = self._instances.get(instance_id)
        if record is None or record.ready_at is not None:
            return []  # it failed meanwhile (or this is a repeat)
        record.ready_at = now
        spare = self.router.group.is_spare(instance_id)
        ready = self.router.instance_ready(instance_id, now)
        if spare:
            return []
        actions: list[Action] = []
        for model in ready.loads:
            self._begin_load(instance_id, model, self._loader_user(instance_id, model), (), now)
            actions.append(self._load_action(instance_id, model, ()))
        self._reroute(now, actions)
        return actions

    def start_failed(self, instance_id: int, now: float, reason: str) -> list[Action]:
        """The instance did not start; its requests are routed again (or refused)."""
        if instance_id not in self._instances:
            return []
        self.counters.failed_starts += 1
        actions: list[Action] = []
        self._lose(instance_id, now, f"did not start: {reason}", actions)
        return actions

    def loaded(
        self,
        instance_id: int,
        model: str,
        now: float,
        *,
        load_s: float | None,
        error: SealserveError | None = None,
    ) -> list[Action]:
        """A load finished (``error`` if it failed); the requests waiting for it go on."""
        load = self._loads.pop((instance_id, model), None)
        if load is None or instance_id not in self._instances:
            return []  # the instance failed meanwhile
        if error is not None:
            measured = _NOT_MEASURED
        elif load_s is not None:
            measured = load_s
        else:
            measured = max(0.0, now - load.began_at)
        ready = self.router.model_loaded(instance_id, model, now, load_s=measured)
        if error is None:
            self.counters.model_loads += 1
        else:
            self.counters.failed_loads += 1
        actions: list[Action] = []
        for rid in ready.run:
            tracked = self._requests[rid]
            if error is not None and _fails_too(error, tracked, load.user_id):
                tracked.phase = RequestPhase.RUNNING
                self._let_go(tracked, now, _NOT_MEASURED)
                if not tracked.abandoned:
                    self.counters.failed += 1
                    actions.append(Reject(rid, error))
            else:
                self._run(tracked, now, actions)
        self._reroute(now, actions)
        return actions

    def finished(
        self,
        request_id: int,
        now: float,
        *,
        exec_s: float | None,
        ok: bool,
        loaded_model: bool = False,
        runtime_lost: bool = False,
    ) -> list[Action]:
        """A request sent to an instance came back (``ok``, or with an error).

        ``exec_s`` is its measured inference time; ``loaded_model`` says the runtime loaded
        the model for it (a reload after a runtime restart); ``runtime_lost`` that the runtime
        died under it.
        """
        tracked = self._requests.get(request_id)
        if tracked is None or tracked.phase is not RequestPhase.RUNNING:
            raise ValueError(f"request_id {request_id!r} is not running")
        measured = exec_s
        if measured is None:
            sent = tracked.sent_at if tracked.sent_at is not None else now
            measured = max(0.0, now - sent)
        self._let_go(tracked, now, measured)
        if loaded_model:
            self.counters.model_loads += 1
        if runtime_lost:
            self.counters.runtime_failures += 1
            record = (
                None if tracked.instance_id is None else self._instances.get(tracked.instance_id)
            )
            if record is not None:
                record.runtime_restarting = True
        if not tracked.abandoned:
            if ok:
                self.counters.served += 1
            else:
                self.counters.failed += 1
        actions: list[Action] = []
        self._reroute(now, actions)
        return actions

    def abandon(self, request_id: int, now: float) -> list[Action]:
        """The caller stopped waiting (it answered the request itself, or its client left)."""
        tracked = self._requests.get(request_id)
        if tracked is None:
            return []
        if tracked.phase is RequestPhase.WAITING:
            self._forget_waiting(tracked)
        else:
            tracked.abandoned = True
        return []

    def health(self, instance_id: int, status: InstanceHealth, now: float) -> list[Action]:
        """A health check's result: replace an instance that is gone, failed, or has not
        answered ``unhealthy_after`` checks in a row."""
        record = self._instances.get(instance_id)
        if record is None or record.ready_at is None:
            return []
        actions: list[Action] = []
        if status is InstanceHealth.READY:
            record.failed_checks = 0
            record.runtime_restarting = False
        elif status is InstanceHealth.RESTARTING:
            record.failed_checks = 0
            record.runtime_restarting = True
        elif status is InstanceHealth.UNREACHABLE:
            record.failed_checks += 1
            if record.failed_checks >= self.config.unhealthy_after:
                self._lose(
                    instance_id, now, f"{record.failed_checks} health checks failed", actions
                )
        else:
            self._lose(instance_id, now, f"its host {status.value}", actions)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Time passed: stop instances idle past their keep-alive, refuse requests whose
        deadline passed before they could run, route again those whose retry time came."""
        actions: list[Action] = []
        expired = self.router.expire(now)
        for iid in expired:
            record = self._instances.pop(iid, None)
            self.meter.stop(iid, now=now)
            if record is not None and record.spare and record.taken_at is None:
                actions.append(StopInstance(iid, "a spare nobody took, idle past its keep-alive"))
                continue
            self.counters.scaled_to_zero += 1
            actions.append(StopInstance(iid, "idle past its keep-alive"))
        for tracked in list(self._requests.values()):
            if tracked.abandoned or tracked.deadline > now:
                continue
            if tracked.phase is RequestPhase.WAITING:
                self._forget_waiting(tracked)
                self.counters.rejected += 1
                actions.append(
                    Reject(
                        tracked.request_id,
                        CapacityExhausted(
                            "no instance could take the request before its deadline "
                            f"({len(self._instances)} instances alive, all busy); retry later"
                        ),
                    )
                )
            elif tracked.phase is RequestPhase.ASSIGNED:
                tracked.abandoned = True
                self.counters.failed += 1
                actions.append(
                    Reject(
                        tracked.request_id,
                        DeadlineExceeded(
                            "the deadline passed while the request waited for "
                            + ("a cold start" if tracked.cold_start else "a model load")
                        ),
                    )
                )
        due = any(t.retry_at is not None and t.retry_at <= now for t in self._requests.values())
        if expired or due:
            self._reroute(now, actions)
        self._start_spares(now, actions)
        return actions

    def _start_spares(self, now: float, actions: list[Action]) -> None:
        """Start the spares the router wants now (billed from now, like any instance)."""
        for inst in self.router.spares_to_start(now):
            self._instances[inst.id] = InstanceRecord(
                inst.memory_mb, inst.budget_mb, now, spare=True
            )
            self.meter.start(inst.id, memory_mb=inst.memory_mb, now=now, spare=True)
            self.counters.spare_starts += 1
            actions.append(
                StartInstance(
                    inst.id,
                    inst.memory_mb,
                    inst.budget_mb,
                    self.config.instance_concurrency,
                    spare=True,
                )
            )

    def refuse_pending(self, now: float) -> list[Action]:
        """The platform is closing: refuse every request not yet sent to an instance."""
        actions: list[Action] = []
        for tracked in list(self._requests.values()):
            if tracked.phase is RequestPhase.RUNNING or tracked.abandoned:
                continue
            if tracked.phase is RequestPhase.WAITING:
                self._forget_waiting(tracked)
            else:
                tracked.abandoned = True
            self.counters.rejected += 1
            error = PlatformError("the platform is shutting down; retry later")
            error.retryable = True
            actions.append(Reject(tracked.request_id, error))
        return actions

    def shutdown(self, now: float) -> list[Action]:
        """Stop everything: refuse the requests not yet sent, stop every instance."""
        actions = self.refuse_pending(now)
        for iid in list(self._instances):
            self._instances.pop(iid)
            self.meter.stop(iid, now=now)
            actions.append(StopInstance(iid, "the platform is shutting down"))
        return actions

    # -- internals -----------------------------------------------------------------------------

    def _route(self, tracked: Tracked, now: float, actions: list[Action]) -> None:
        rid = tracked.request_id
        routed = self.router.route(RouteRequest(rid, tracked.model, tracked.arrived_at), now)
        decision = routed.decision
        if decision.kind is DecisionKind.WAIT:
            if tracked.phase is not RequestPhase.WAITING or tracked.waits == 0:
                self._log_decision(rid, decision, tracked.waits, now)
            tracked.phase = RequestPhase.WAITING
            tracked.waits += 1
            tracked.retry_at = decision.retry_at
            self._waiting[rid] = None
            return
        self._waiting.pop(rid, None)
        tracked.retry_at = None
        tracked.decision = self._log_decision(rid, decision, tracked.waits, now)
        iid = decision.instance_id
        assert iid is not None  # an applied RUN or START names its instance
        tracked.instance_id = iid
        tracked.phase = RequestPhase.ASSIGNED
        if decision.kind is DecisionKind.START:
            inst = self.router.group.instance(iid)
            self._instances[iid] = InstanceRecord(inst.memory_mb, inst.budget_mb, now)
            self.meter.start(iid, memory_mb=inst.memory_mb, now=now)
            self.counters.cold_starts += 1
            tracked.cold_start = True
            actions.append(
                StartInstance(iid, inst.memory_mb, inst.budget_mb, self.config.instance_concurrency)
            )
            self._start_spares(now, actions)
            return
        record = self._instances.get(iid)
        if record is not None and record.spare and record.taken_at is None:
            record.taken_at = now  # a spare took the request: no cold start to wait for
            self.meter.take(iid, now=now)
            self.counters.spares_taken += 1
            self._start_spares(now, actions)
        if routed.loads:
            self._begin_load(iid, tracked.model, tracked.user_id, decision.evict, now)
            actions.append(self._load_action(iid, tracked.model, decision.evict))
        elif routed.run_now:
            self._run(tracked, now, actions)
        elif not self.router.group.instance(iid).is_ready:
            tracked.cold_start = True

    def _begin_load(
        self, iid: int, model: str, user_id: str, evict: tuple[str, ...], now: float
    ) -> None:
        self._loads[(iid, model)] = LoadInFlight(user_id, now)
        self.counters.evictions += len(evict)

    def _load_action(self, iid: int, model: str, evict: tuple[str, ...]) -> LoadModel:
        return LoadModel(iid, model, self._loads[(iid, model)].user_id, tuple(evict))

    def _loader_user(self, iid: int, model: str) -> str:
        """The user whose keys load ``model`` on ``iid``: its first live request's."""
        candidates = [
            self._requests[rid]
            for rid in self.router.group.instance(iid).request_ids()
            if rid in self._requests and self._requests[rid].model == model
        ]
        live = [t for t in candidates if not t.abandoned] or candidates
        if not live:
            raise AssertionError(f"a load of {model!r} on instance {iid} has no request")
        return live[0].user_id

    def _run(self, tracked: Tracked, now: float, actions: list[Action]) -> None:
        tracked.phase = RequestPhase.RUNNING
        tracked.sent_at = now
        if tracked.abandoned or tracked.deadline <= now:
            # Answered already, or too late to be worth sending: let its slot go at once.
            self._let_go(tracked, now, _NOT_MEASURED)
            if not tracked.abandoned:
                self.counters.failed += 1
                actions.append(Reject(tracked.request_id, DeadlineExceeded("the deadline passed")))
            return
        assert tracked.instance_id is not None
        actions.append(RunRequest(tracked.request_id, tracked.instance_id))

    def _let_go(self, tracked: Tracked, now: float, exec_s: float) -> None:
        """The request is over: free its slot (when the router still holds it)."""
        if tracked.in_group:
            self.router.request_done(tracked.request_id, now, exec_s=exec_s)
        self._requests.pop(tracked.request_id, None)

    def _forget_waiting(self, tracked: Tracked) -> None:
        if tracked.request_id in self._waiting:
            self.router.cancel(tracked.request_id)
            del self._waiting[tracked.request_id]
        self._requests.pop(tracked.request_id, None)

    def _reroute(self, now: float, actions: list[Action]) -> None:
        for rid in list(self._waiting):
            tracked = self._requests.get(rid)
            if tracked is not None and tracked.phase is RequestPhase.WAITING:
                self._route(tracked, now, actions)

    def _lose(self, iid: int, now: float, reason: str, actions: list[Action]) -> None:
        """The instance is gone or must be replaced: stop it, deal with its requests."""
        self._instances.pop(iid)
        self.meter.stop(iid, now=now)
        self.counters.instances_replaced += 1
        for key in [k for k in self._loads if k[0] == iid]:
            del self._loads[key]
        actions.append(StopInstance(iid, reason))
        for request in self.router.instance_failed(iid, now):
            tracked = self._requests[request.request_id]
            tracked.instance_id = None
            if tracked.phase is RequestPhase.RUNNING or tracked.abandoned:
                # In flight there (its call fails by itself), or already answered.
                self.router.cancel(tracked.request_id)
                tracked.in_group = False
                if tracked.phase is not RequestPhase.RUNNING:
                    self._requests.pop(tracked.request_id, None)
            elif tracked.reroutes >= self.config.max_reroutes:
                self.router.cancel(tracked.request_id)
                self._requests.pop(tracked.request_id, None)
                self.counters.failed += 1
                error = PlatformError(
                    f"instance {iid} failed ({reason}) before the request ran, "
                    f"{tracked.reroutes + 1} times; retry later"
                )
                error.retryable = True
                actions.append(Reject(tracked.request_id, error))
            else:
                tracked.reroutes += 1
                tracked.phase = RequestPhase.WAITING
                tracked.decision = None
                self.counters.rerouted += 1
                self._route(tracked, now, actions)
        self._reroute(now, actions)


def _fails_too(error: SealserveError, tracked: Tracked, load_user: str) -> bool:
    """Whether a failed load's error is also the answer for ``tracked`` (waiting for it)."""
    if isinstance(
        error, ModelNotAvailable | ModelNotStored | StoreIntegrityError | MemoryBudgetExceeded
    ):
        return True
    return isinstance(error, AccessDenied) and tracked.user_id == load_user
