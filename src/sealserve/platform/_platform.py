"""The platform driver: the controller's decisions carried out on a backend, on one event loop.

::

    backend = LocalBackend(LocalOptions(...))
    async with Platform(backend, config=PlatformConfig(), model_memory_mb=catalog.memory_mb):
        result = await platform.infer(model_id=..., user_id=..., request_id=...,
                                      sealed_input=envelope, deadline_s=time.time() + 30)
        result.sealed_output, result.timings, result.decision.describe()

Every call of the controller happens on the loop that opened the platform; backend calls run
as tasks.  A timer wakes the controller when it has something to do (a keep-alive, a deadline)
and checks the instances' health every ``health_interval_s``.  Closing refuses what has not
been sent, lets what runs finish (up to ``drain_s``), and stops every instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve._resource import AsyncResource, ResourceState
from sealserve.ecall import timings
from sealserve.errors import (
    DeadlineExceeded,
    InstanceError,
    PlatformError,
    RuntimeUnavailable,
    SealserveError,
)
from sealserve.packer import CostPriors, Policy, make_policy
from sealserve.platform._actions import (
    Action,
    DecisionRecord,
    LoadModel,
    Reject,
    RunRequest,
    StartInstance,
    StopInstance,
)
from sealserve.platform._backend import InstanceBackend, InstanceHealth, InstanceInfo
from sealserve.platform._config import PlatformConfig
from sealserve.platform._controller import PlatformController
from sealserve.platform._metrics import PlatformMetrics
from sealserve.platform._priors import NamedPriors
from sealserve.platform._stats import PlatformStats

__all__ = ["Platform", "PlatformResult"]

_log = get_logger(__name__)
#: How long :meth:`Platform.close` waits for the instances' stops before the backend's close
#: kills what is left (a backend bounds each stop itself; this bounds all of them together).
_STOPS_BOUND_S: Final = 45.0
#: Added to a request's deadline before the driver stops waiting for an answer on its own
#: (the instance enforces the deadline; this only bounds a call that never comes back).  Less
#: than the 5 s a client waits past the deadline it sent (``GatewayClient``), so that even then
#: the client is answered (retryably) rather than left without an answer.
_ANSWER_GRACE_S: Final = 2.0
#: The stages of a load that a request which waited for it reports as its own.
_LOAD_STAGES = frozenset(
    {
        timings.ATTESTATION_KEY_RELEASE,
        timings.MODEL_FETCH,
        timings.MODEL_UNSEAL_SESSION,
        timings.MODEL_WAIT,
        timings.SANDBOX_START,
        timings.RUNTIME_START,
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class PlatformResult:
    """A served request: the sealed output, the stage timings (ms), how it was routed.

    ``timings`` holds the instance's stages (docs/runtime.md) and the platform's: ``queue``
    (arrival to sent, which includes any wait below), ``cold_start`` (the start of the
    instance it waited for), ``model_load`` (the load it waited for; the load's own stages
    are included under their names) and ``platform`` (arrival to answer).
    """

    request_id: str
    sealed_output: bytes
    timings: Mapping[str, float]
    decision: DecisionRecord | None
    instance_id: int


@dataclasses.dataclass(slots=True)
class _Call:
    model_id: str
    user_id: str
    request_id: str
    sealed_input: bytes | bytearray
    deadline_ms: int
    arrived: float
    future: asyncio.Future[PlatformResult]
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


class Platform(AsyncResource):
    """Instances on a backend, routed by an FnPacker policy (see the module docstring).

    ``model_memory_mb`` gives the memory a model takes in a runtime's budget.  ``policy`` is
    made from ``config.policy`` (with ``priors``, the measured cost model, looked up by model
    name, when given) unless one is passed.  With ``autotick`` off no timer runs: call
    :meth:`tick` and :meth:`check_health` (tests move a manual clock instead of sleeping).

    ``async with platform:`` (or ``await open()`` / ``await close()``); a request that
    arrives while it closes is a retryable :class:`~sealserve.errors.PlatformError`.
    """

    resource_name = "the platform"

    def __init__(
        self,
        backend: InstanceBackend,
        *,
        config: PlatformConfig,
        model_memory_mb: Callable[[str], float],
        policy: Policy | None = None,
        priors: CostPriors | None = None,
        clock: Clock = SYSTEM_CLOCK,
        registry: CollectorRegistry | None = None,
        autotick: bool = True,
        drain_s: float = 30.0,
    ) -> None:
        if not isinstance(backend, InstanceBackend):
            raise TypeError(f"backend must be an InstanceBackend, got {type(backend).__name__}")
        if not drain_s >= 0:
            raise ValueError(f"drain_s must be >= 0, got {drain_s!r}")
        super().__init__()
        self.backend = backend
        self.config = config
        self.controller = PlatformController(
            config,
            policy=policy
            if policy is not None
            else make_policy(
                config.policy, priors=NamedPriors(priors) if priors is not None else None
            ),
            model_memory_mb=model_memory_mb,
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = PlatformMetrics(self.registry, self.stats)
        self._clock = clock
        self._autotick = autotick
        self._drain_s = drain_s
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[int] = set()
        self._cold_start_ms: dict[int, float] = {}
        self._over_memory: set[int] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._planned: float = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._autotick:
            self._timer = asyncio.create_task(self._timer_loop(), name="platform-timer")
        _log.event("platform.opened", policy=self.controller.policy_name)

    async def _close(self) -> None:
        """Refuse what was not sent, let what runs finish (up to ``drain_s``), stop all."""
        if self._loop is None:
            return  # never opened
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        self._apply(self.controller.refuse_pending(self._now()))
        runs = [t for t in self._tasks if not t.done() and t.get_name().startswith("run-")]
        if runs:
            await asyncio.wait(runs, timeout=self._drain_s)
        self._apply(self.controller.shutdown(self._now()))
        stops = [t for t in self._tasks if not t.done() and t.get_name().startswith("stop-")]
        if stops:  # each stop is bounded by the backend; this bounds waiting for them all
            _, late = await asyncio.wait(stops, timeout=_STOPS_BOUND_S)
            if late:
                _log.event(
                    "stop.timed_out",
                    level=logging.WARNING,
                    step="platform.stops",
                    bound_s=_STOPS_BOUND_S,
                    left=len(late),
                )
        await self.backend.close()  # kills what is still alive, and names it
        for task in list(self._tasks):
            task.cancel()
        self._closing = False
        _log.event("platform.closed")

    # -- serving -------------------------------------------------------------------------------

    async def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray,
        deadline_s: float,
    ) -> PlatformResult:
        """Serve one sealed request by ``deadline_s`` (Unix seconds); raises sealserve's
        errors (``retryable`` where sending it again may succeed)."""
        if self._closing:  # requests that race the close may go to another replica
            error = PlatformError("the platform is closing")
            error.retryable = True
            raise error
        self._check_opened()
        loop = asyncio.get_running_loop()
        now = self._now()
        remaining = deadline_s - self._clock.time()
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before it arrived")
        rid = next(self._ids)
        future: asyncio.Future[PlatformResult] = loop.create_future()
        call = _Call(
            model_id=model_id,
            user_id=user_id,
            request_id=request_id,
            sealed_input=sealed_input,
            deadline_ms=int(deadline_s * 1000),
            arrived=now,
            future=future,
        )
        self._calls[rid] = call
        try:
            actions = self.controller.submit(
                rid, model=model_id, user_id=user_id, deadline=now + remaining, now=now
            )
        except BaseException:
            del self._calls[rid]
            raise
        self._apply(actions)
        try:
            return await asyncio.wait_for(asyncio.shield(future), remaining + _ANSWER_GRACE_S)
        except TimeoutError:
            raise DeadlineExceeded("no answer from the instance by the deadline") from None
        finally:
            if not future.done():
                future.cancel()
                self._apply(self.controller.abandon(rid, self._now()))
            if rid not in self._running:
                self._calls.pop(rid, None)

    @property
    def policy(self) -> str:
        """The routing policy's name."""
        return self.controller.policy_name

    def stats(self) -> PlatformStats:
        return self.controller.snapshot(self._now(), describe=self.backend.describe)

    def describe(self, instance_id: int) -> InstanceInfo | None:
        return self.backend.describe(instance_id)

    async def tick(self) -> None:
        """Let the controller act on the time (keep-alives, deadlines, retries)."""
        self._apply(self.controller.tick(self._now()))

    async def check_health(self) -> None:
        """Check every ready instance once; replace those that are gone or failed."""
        ids = self.controller.ready_instance_ids()
        results = await asyncio.gather(
            *(self._health_of(iid) for iid in ids), return_exceptions=False
        )
        for iid, status in zip(ids, results, strict=True):
            self._apply(self.controller.health(iid, status, self._now()))
        self._note_memory(ids)

    def _note_memory(self, ids: tuple[int, ...]) -> None:
        """Log an instance that uses more than its size (once each time it goes over): no
        sandbox stops it here, where a platform with memory limits would kill it."""
        for iid in ids:
            info = self.backend.describe(iid)
            # The controller's record, not the router's group: a spare is kept out of the
            # group's view (asking the group for it raised and ended the timer loop).
            size = self.controller.memory_mb(iid)
            if info is None or info.resident_mb is None or size is None:
                continue
            if info.resident_mb > size and iid not in self._over_memory:
                self._over_memory.add(iid)
                _log.event(
                    "platform.instance_over_memory",
                    level=logging.WARNING,
                    instance=iid,
                    resident_mb=round(info.resident_mb, 1),
                    memory_mb=size,
                )
            elif info.resident_mb <= size:
                self._over_memory.discard(iid)
        self._over_memory.intersection_update(ids)

    async def _health_of(self, instance_id: int) -> InstanceHealth:
        try:
            return await asyncio.wait_for(self.backend.health(instance_id), 10.0)
        except (TimeoutError, SealserveError, OSError):
            return InstanceHealth.UNREACHABLE

    # -- carrying out actions ------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.monotonic()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Reject):
                call = self._calls.get(action.request_id)
                if call is not None and not call.future.done():
                    call.future.set_exception(action.error)
                if action.request_id not in self._running:
                    self._calls.pop(action.request_id, None)
            elif isinstance(action, RunRequest):
                self._running.add(action.request_id)
                self._spawn(self._run(action), f"run-{action.request_id}")
            elif isinstance(action, LoadModel):
                self._spawn(self._load(action), f"load-{action.instance_id}")
            elif isinstance(action, StartInstance):
                self._spawn(self._start(action), f"start-{action.instance_id}")
            elif isinstance(action, StopInstance):
                _log.event(
                    "platform.stop_instance", instance=action.instance_id, reason=action.reason
                )
                self._spawn(self.backend.stop(action.instance_id), f"stop-{action.instance_id}")
        if actions and self._wake is not None:
            wakeup = self.controller.next_wakeup()
            if wakeup is not None and wakeup < self._planned:
                self._wake.set()

    async def _start(self, action: StartInstance) -> None:
        iid = action.instance_id
        began = self._now()
        try:
            info = await asyncio.wait_for(
                self.backend.start(
                    iid,
                    memory_mb=action.memory_mb,
                    budget_mb=action.budget_mb,
                    concurrency=action.concurrency,
                ),
                self.config.start_timeout_s,
            )
        except (SealserveError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            _log.event("platform.start_failed", instance=iid, error=type(exc).__name__)
            self._apply(self.controller.start_failed(iid, self._now(), reason))
            await self.backend.stop(iid)
            return
        took = self._now() - began
        self._cold_start_ms[iid] = took * 1000
        self.metrics.cold_start.observe(took)
        if iid not in self.controller.instance_ids():  # it was dropped meanwhile
            await self.backend.stop(iid)
            return
        _log.event("platform.instance_started", instance=iid, seconds=round(took, 3), url=info.url)
        self._apply(self.controller.started(iid, self._now()))

    async def _load(self, action: LoadModel) -> None:
        iid, model = action.instance_id, action.model
        for victim in action.evict:
            try:
                await self.backend.evict(iid, model_id=victim)
            except (SealserveError, ValueError) as exc:
                _log.event("platform.evict_failed", instance=iid, error=type(exc).__name__)
        began = self._now()
        error: SealserveError | None = None
        stages: Mapping[str, float] = {}
        try:
            stages = await self.backend.load(
                iid, model_id=model, user_id=action.user_id, timeout_s=self.config.load_timeout_s
            )
        except SealserveError as exc:
            error = exc
        except (OSError, ValueError) as exc:
            error = PlatformError(f"the load failed: {exc}")
        took = self._now() - began
        if error is None:
            self.metrics.model_load.observe(took)
        else:
            _log.event("platform.load_failed", instance=iid, error=type(error).__name__)
        actions = self.controller.loaded(iid, model, self._now(), load_s=took, error=error)
        for act in actions:
            if isinstance(act, RunRequest) and act.instance_id == iid:
                call = self._calls.get(act.request_id)
                if call is not None and call.model_id == model:
                    call.extra["model_load"] = took * 1000
                    call.extra.update((k, v) for k, v in stages.items() if k in _LOAD_STAGES)
        self._apply(actions)

    async def _run(self, action: RunRequest) -> None:
        rid, iid = action.request_id, action.instance_id
        call = self._calls[rid]
        decision = self.controller.decision_for(rid)
        if self.controller.waited_for_cold_start(rid) and iid in self._cold_start_ms:
            call.extra["cold_start"] = self._cold_start_ms[iid]
        sent = self._now()
        queue_s = sent - call.arrived
        self.metrics.queue.observe(queue_s)
        error: SealserveError | ValueError | None = None
        timings: Mapping[str, float] = {}
        output = b""
        try:
            outcome = await self.backend.infer(
                iid,
                model_id=call.model_id,
                user_id=call.user_id,
                request_id=call.request_id,
                sealed_input=call.sealed_input,
                deadline_ms=call.deadline_ms,
            )
            output, timings = outcome.sealed_output, outcome.timings
        except SealserveError as exc:
            error = exc
        except ValueError as exc:
            # The instance refused what the request carries (a tensor that does not fit the
            # model): the caller's mistake, answered 400 with the instance's fixed text.
            error = exc
        except OSError as exc:
            error = PlatformError(f"the instance failed the request: {exc}")
        except Exception as exc:  # a bug must not leave the request without an answer
            _log.event("platform.run_failed", level=logging.ERROR, instance=iid,
                       error=type(exc).__name__)  # fmt: skip
            error = PlatformError(f"the call to the instance failed: {type(exc).__name__}")
            error.retryable = True
        finally:
            self._running.discard(rid)
        now = self._now()
        inference = timings.get("inference")
        try:
            actions = self.controller.finished(
                rid,
                now,
                exec_s=None if inference is None else inference / 1000,
                ok=error is None,
                loaded_model="model_fetch" in timings,
                runtime_lost=isinstance(error, RuntimeUnavailable),
            )
        except ValueError:  # the controller let it go meanwhile: still answer the caller
            _log.event("platform.run_untracked", level=logging.WARNING, instance=iid)
            actions = []
        self._apply(actions)
        if isinstance(error, InstanceError) and error.retryable:
            self._spawn(self._check_one(iid), f"health-{iid}")  # unreachable: look now
        self._calls.pop(rid, None)
        if call.future.done():
            return
        if error is not None:
            call.future.set_exception(error)
            return
        merged = dict(call.extra)
        merged.update(timings)
        merged["queue"] = queue_s * 1000
        merged["platform"] = (now - call.arrived) * 1000
        call.future.set_result(
            PlatformResult(
                request_id=call.request_id,
                sealed_output=output,
                timings=merged,
                decision=decision,
                instance_id=iid,
            )
        )

    async def _check_one(self, instance_id: int) -> None:
        if instance_id in self.controller.ready_instance_ids():
            status = await self._health_of(instance_id)
            self._apply(self.controller.health(instance_id, status, self._now()))

    async def _timer_loop(self) -> None:
        assert self._wake is not None
        next_health = self._now() + self.config.health_interval_s
        while self.state is ResourceState.OPENED:
            now = self._now()
            try:
                self._apply(self.controller.tick(now))
                if now >= next_health:
                    await self.check_health()
            except Exception as exc:  # a bug must not end the timer: nothing would expire
                _log.event("platform.timer_failed", level=logging.ERROR,
                           error=type(exc).__name__, detail=str(exc)[:200])  # fmt: skip
            if now >= next_health:
                next_health = self._now() + self.config.health_interval_s
            wakeup = self.controller.next_wakeup()
            self._planned = min(wakeup if wakeup is not None else math.inf, next_health)
            self._wake.clear()
            delay = max(0.005, self._planned - self._now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def __repr__(self) -> str:
        return (
            f"Platform(policy={self.controller.policy_name!r}, state={self.state.value}, "
            f"instances={len(self.controller.instance_ids())})"
        )
