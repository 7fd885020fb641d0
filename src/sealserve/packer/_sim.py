"""The trace-driven discrete-event simulator: the same policy objects, in virtual time.

Events (arrivals, cold starts done, loads done, requests done, keep-alive expiries) are taken
in time order from a heap; a :class:`~sealserve._clock.ManualClock` is moved to each event and
every policy call is given its time.  Requests that a policy holds (``WAIT``) are routed again,
in arrival order, after every event that frees capacity, and at the time the policy asked for.

The cost model gives each request's inference time (or the trace's ``duration_ms``), each
model's load time and memory, and the cold start.  Every sampled duration is the cost model's
figure times a log-normal factor with mean 1 and coefficient of variation ``jitter`` (measured
times vary; 0 turns it off), drawn from a generator seeded with ``seed``: the same trace, cost
model, policy and seed give the same result.

A request's latency is the time from its arrival to the end of its inference: queueing at the
router, waiting for a cold start, waiting for a model load, and the inference itself.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sealserve._clock import ManualClock
from sealserve.errors import PackerError
from sealserve.packer._config import GroupConfig
from sealserve.packer._costs import CostModel
from sealserve.packer._decision import DecisionKind, RouteRequest
from sealserve.packer._policy import Policy
from sealserve.packer._router import Router
from sealserve.packer._spares import SpareConfig
from sealserve.packer._trace import Trace

__all__ = ["SimResult", "simulate"]

_ARRIVE, _READY, _LOADED, _DONE, _EXPIRE, _RETRY = range(6)


@dataclasses.dataclass(frozen=True)
class SimResult:
    """What one policy did with one trace."""

    policy: str
    options: dict[str, Any]
    latencies_s: np.ndarray
    cold_starts: int
    #: Loads beyond the one every cold start includes: an instance switching to a model.
    model_loads: int
    evictions: int
    gb_s: float
    peak_instances: int
    instance_seconds: float
    after_cold_start: int
    after_load: int
    queued: int
    decisions: dict[str, int]
    end_s: float
    seed: int = 0
    #: Instance-seconds per function (one per model under ``dedicated``; one for packing).
    function_s: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Every instance as (function, started at, stopped at), in start order.
    function_intervals: tuple[tuple[str, float, float], ...] = ()
    #: Spares started ahead of demand, how many a request took, and their GB-seconds while
    #: they were spares (included in ``gb_s``).
    spare_starts: int = 0
    spares_taken: int = 0
    spare_gb_s: float = 0.0

    @property
    def requests(self) -> int:
        return int(self.latencies_s.size)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000.0)

    def summary(self) -> dict[str, Any]:
        """The JSON fields of one policy: latency percentiles, counts and GB-seconds."""
        lat = self.latencies_s
        return {
            "p50_ms": round(self.percentile_ms(50), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "p999_ms": round(self.percentile_ms(99.9), 3),
            "mean_ms": round(float(lat.mean()) * 1000.0, 3),
            "max_ms": round(float(lat.max()) * 1000.0, 3),
            "cold_starts": self.cold_starts,
            "model_loads": self.model_loads,
            "switches": self.cold_starts + self.model_loads,
            "evictions": self.evictions,
            "gb_s": round(self.gb_s, 3),
            "spare_starts": self.spare_starts,
            "spares_taken": self.spares_taken,
            "spare_gb_s": round(self.spare_gb_s, 3),
            "instance_s": round(self.instance_seconds, 3),
            "peak_instances": self.peak_instances,
            "requests": self.requests,
            "requests_after_cold_start": self.after_cold_start,
            "requests_after_load": self.after_load,
            "requests_queued": self.queued,
            "decisions": self.decisions,
            "options": self.options,
            "seed": self.seed,
        }


class _Sampler:
    def __init__(self, jitter: float, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._sigma = math.sqrt(math.log1p(jitter * jitter)) if jitter > 0 else 0.0

    def __call__(self, mean: float) -> float:
        if self._sigma == 0.0:
            return mean
        factor = self._rng.lognormal(-self._sigma * self._sigma / 2.0, self._sigma)
        return mean * float(factor)


def simulate(
    trace: Trace,
    policy: Policy,
    costs: CostModel,
    *,
    config: GroupConfig,
    jitter: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    spares: SpareConfig | None = None,
) -> SimResult:
    """Run ``trace`` through ``policy`` on a group of ``config``; see the module docs.

    With ``spares``, instances are started ahead of demand as :mod:`._spares` decides, and
    billed from their start like the rest.
    """
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be within [0, 1], got {jitter!r}")
    router = Router(policy, config, model_memory_mb=costs.memory_mb, spares=spares)
    group = router.group
    clock = ManualClock(start=0.0)
    sample = _Sampler(jitter, seed)
    requests = trace.requests
    arrival = np.array([r.arrival_s for r in requests], dtype=np.float64)
    arrival -= arrival[0]
    done_at = np.full(len(requests), np.nan)
    heap: list[tuple[float, int, int, int, str]] = []
    seq = 0

    def push(at: float, kind: int, a: int = 0, b: str = "") -> None:
        nonlocal seq
        heapq.heappush(heap, (at, seq, kind, a, b))
        seq += 1

    for index in range(len(requests)):
        push(float(arrival[index]), _ARRIVE, index)

    waiting: dict[int, RouteRequest] = {}
    retry_times: set[float] = set()
    after_cold = after_load = queued = 0
    peak = 0
    keep = group.config.keep_alive_s

    def infer_time(rid: int) -> float:
        req = requests[rid]
        return sample(req.duration_s if req.duration_s is not None else costs.infer_s(req.model))

    def dispatch(req: RouteRequest, now: float) -> bool:
        nonlocal after_cold, after_load, peak
        routed = router.route(req, now)
        decision = routed.decision
        if decision.kind is DecisionKind.WAIT:
            waiting[req.request_id] = req
            at = decision.retry_at
            if at is not None and at > now and at not in retry_times:
                retry_times.add(at)
                push(at, _RETRY)
            return False
        assert decision.instance_id is not None
        iid = decision.instance_id
        if decision.cold_start:
            push(now + sample(costs.cold_start_s), _READY, iid)
            peak = max(peak, len(group.instances))
        for model in routed.loads:
            push(now + sample(costs.load_s(model)), _LOADED, iid, model)
        if routed.run_now:
            push(now + infer_time(req.request_id), _DONE, req.request_id)
        else:
            inst = group.instance(iid)
            if not inst.is_ready:
                after_cold += 1
            else:
                after_load += 1
        return True

    def start_spares(now: float) -> None:
        for spare in router.spares_to_start(now):
            push(now + sample(costs.cold_start_s), _READY, spare.id)

    def retry_waiting(now: float) -> None:
        nonlocal queued
        for rid in list(waiting):
            req = waiting[rid]
            if dispatch(req, now):
                del waiting[rid]
                queued += 1

    processed = 0
    now = 0.0
    while heap:
        at, _seq, kind, a, b = heapq.heappop(heap)
        clock.advance(max(0.0, at - clock.monotonic()))
        now = clock.monotonic()
        if kind == _ARRIVE:
            req = RouteRequest(a, requests[a].model, now)
            dispatch(req, now)
            start_spares(now)
            processed += 1
            if progress is not None and processed % 2000 == 0:
                progress(processed, len(requests))
            continue
        if kind == _READY:
            spare = group.is_spare(a)
            actions = router.instance_ready(a, now)
            if spare:
                push(now + keep, _EXPIRE)  # idle from now: it stops if nobody takes it
            for model in actions.loads:
                push(now + sample(costs.load_s(model)), _LOADED, a, model)
        elif kind == _LOADED:
            actions = router.model_loaded(a, b, now)
            for rid in actions.run:
                push(now + infer_time(rid), _DONE, rid)
        elif kind == _DONE:
            iid = group.request_instance(a)
            router.request_done(a, now)
            done_at[a] = now
            if group.instance(iid).in_flight == 0:
                push(now + keep, _EXPIRE)
        elif kind == _EXPIRE:
            router.expire(now)
        else:
            retry_times.discard(at)
        if waiting:
            retry_waiting(now)
        start_spares(now)
    if waiting:
        raise PackerError(
            f"policy {policy.name!r} left {len(waiting)} requests waiting with nothing "
            "in flight that could free a slot"
        )
    if progress is not None:
        progress(len(requests), len(requests))
    if group.instances or group.spares:
        raise PackerError(
            f"{len(group.instances) + len(group.spares)} instances still alive after the trace "
            "drained"
        )
    latencies = done_at - arrival
    if np.isnan(latencies).any():
        raise PackerError("some requests never completed")  # pragma: no cover - a bug guard
    instance_s = sum(
        (stop if stop is not None else now) - start for _mb, start, stop in group.intervals()
    )
    function_s: dict[str, float] = {}
    intervals = []
    for inst in sorted(group.stopped, key=lambda i: i.id):
        stop = inst.stopped_at if inst.stopped_at is not None else now
        function_s[inst.function] = function_s.get(inst.function, 0.0) + stop - inst.started_at
        intervals.append((inst.function, inst.started_at, stop))
    return SimResult(
        policy=policy.name,
        options=policy.options(),
        latencies_s=latencies,
        cold_starts=group.cold_starts,
        model_loads=group.model_loads - group.cold_starts,
        evictions=group.evictions,
        gb_s=group.gb_seconds(now),
        peak_instances=peak,
        instance_seconds=instance_s,
        after_cold_start=after_cold,
        after_load=after_load,
        queued=queued,
        decisions={k.value: v for k, v in router.decisions.items()},
        end_s=now,
        seed=seed,
        function_s=function_s,
        function_intervals=tuple(intervals),
        spare_starts=group.spare_starts,
        spares_taken=group.spare_adoptions,
        spare_gb_s=group.spare_gb_seconds(now),
    )
