"""Properties of the platform controller under random workloads and failures.

A tiny world in virtual time carries out the controller's actions: starts and loads take a
while and may fail, requests run for a while, health checks find instances gone.  Whatever
happens, for every policy:

* every request is answered exactly once (served, or refused with an error);
* no instance runs more requests than its concurrency, and no more instances are alive than
  the platform's maximum;
* every instance starts in one of the router's shapes (its own size and model budget, the
  platform's size unless the policy starts other sizes), as the router's group has it;
* once the work is done and the keep-alive has passed, every instance has stopped, and the
  meter bills each instance its own size times its alive interval.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sealserve.errors import ModelNotAvailable, SealserveError
from sealserve.packer import make_policy
from sealserve.platform import (
    LIVE_POLICIES,
    InstanceHealth,
    LoadModel,
    PlatformConfig,
    PlatformController,
    Reject,
    RunRequest,
    StartInstance,
    StopInstance,
)

USERS = ("a" * 64, "b" * 64)
MODELS = ("m0", "m1", "m2", "m3")
SIZES = {"m0": 100.0, "m1": 300.0, "m2": 500.0, "m3": 700.0}

arrival = st.tuples(
    st.floats(min_value=0.0, max_value=30.0),  # when
    st.sampled_from(MODELS),
    st.sampled_from(USERS),
    st.floats(min_value=0.01, max_value=2.0),  # run time
    st.floats(min_value=1.0, max_value=60.0),  # deadline, from arrival
)


@settings(max_examples=80, deadline=None)
@given(
    policy=st.sampled_from(LIVE_POLICIES),
    sizes=st.sampled_from([(), (512,), (512, 1024), (768, 2048)]),
    arrivals=st.lists(arrival, min_size=1, max_size=40),
    max_instances=st.integers(1, 3),
    concurrency=st.integers(1, 3),
    start_fail=st.sets(st.integers(0, 6), max_size=3),
    load_fail=st.sets(st.integers(0, 10), max_size=2),
    gone_at=st.one_of(st.none(), st.floats(min_value=0.0, max_value=30.0)),
)
def test_every_request_is_answered_once_within_the_caps(
    policy: str,
    sizes: tuple[int, ...],
    arrivals: list[tuple[float, str, str, float, float]],
    max_instances: int,
    concurrency: int,
    start_fail: set[int],
    load_fail: set[int],
    gone_at: float | None,
) -> None:
    config = PlatformConfig(
        policy=policy,
        keep_alive_s=5.0,
        max_instances=max_instances,
        instance_concurrency=concurrency,
        instance_memory_mb=1280,  # 896 MB for models, beside the measured reserve
        sizes_mb=sizes,
        max_waiting=1000,
        max_reroutes=2,
    )
    ctl = PlatformController(config, policy=make_policy(policy), model_memory_mb=SIZES.__getitem__)
    shapes = {(s.memory_mb, s.budget_mb) for s in config.shapes}
    if policy != "sealserve":
        assert shapes == {(1280, 896.0)}
    answers: Counter[int] = Counter()
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    run_time: dict[int, float] = {}
    running: dict[int, int] = {}  # request -> instance
    alive: dict[int, tuple[float, int]] = {}  # instance -> spawn time, memory
    started: dict[int, tuple[float, int]] = {}
    stopped: dict[int, float] = {}
    intervals: list[tuple[float, float, int]] = []
    starts = itertools.count()
    loads = itertools.count()

    def push(at: float, kind: str, data: Any) -> None:
        heapq.heappush(events, (at, next(seq), kind, data))

    def apply(actions: list[Any], now: float) -> None:
        for action in actions:
            if isinstance(action, StartInstance):
                shape = (action.memory_mb, action.budget_mb)
                assert shape in shapes
                group = ctl.router.group
                planned = (
                    next(i for i in group.spares if i.id == action.instance_id)
                    if action.spare
                    else group.instance(action.instance_id)
                )
                assert shape == (planned.memory_mb, planned.budget_mb)
                assert action.concurrency == concurrency
                alive[action.instance_id] = (now, action.memory_mb)
                started[action.instance_id] = (now, action.memory_mb)
                assert len(alive) <= max_instances
                push(now + 1.0, "start_fails" if next(starts) in start_fail else "started",
                     action.instance_id)  # fmt: skip
            elif isinstance(action, LoadModel):
                assert action.instance_id in alive
                push(now + 0.5, "load_fails" if next(loads) in load_fail else "loaded",
                     (action.instance_id, action.model))  # fmt: skip
            elif isinstance(action, RunRequest):
                assert action.instance_id in alive
                running[action.request_id] = action.instance_id
                on_instance = sum(1 for i in running.values() if i == action.instance_id)
                assert on_instance <= concurrency
                push(now + run_time[action.request_id], "done", action.request_id)
            elif isinstance(action, Reject):
                answers[action.request_id] += 1
                assert isinstance(action.error, SealserveError)
            elif isinstance(action, StopInstance):
                spawned, memory = alive.pop(action.instance_id)
                intervals.append((spawned, now, memory))
                stopped[action.instance_id] = now
                for rid, iid in list(running.items()):
                    if iid == action.instance_id:  # its in-flight requests fail by themselves
                        push(now, "done_failed", rid)

    for rid, (at, model, user, runs, deadline) in enumerate(sorted(arrivals)):
        run_time[rid] = runs
        push(at, "arrive", (rid, model, user, at + deadline))
    if gone_at is not None:
        push(gone_at, "health", None)
    now = 0.0
    while events:
        now, _, kind, data = heapq.heappop(events)
        apply(ctl.tick(now), now)
        if kind == "arrive":
            rid, model, user, deadline = data
            apply(ctl.submit(rid, model=model, user_id=user, deadline=deadline, now=now), now)
        elif kind == "started":
            apply(ctl.started(data, now), now)
        elif kind == "start_fails":
            apply(ctl.start_failed(data, now, "exit 1"), now)
        elif kind == "loaded":
            apply(ctl.loaded(*data, now, load_s=0.5), now)
        elif kind == "load_fails":
            apply(ctl.loaded(*data, now, load_s=None, error=ModelNotAvailable("broken")), now)
        elif kind in ("done", "done_failed"):
            if running.pop(data, None) is not None:
                apply(ctl.finished(data, now, exec_s=run_time[data], ok=kind == "done"), now)
                answers[data] += 1
        elif kind == "health":
            for iid in ctl.ready_instance_ids()[:1]:
                apply(ctl.health(iid, InstanceHealth.GONE, now), now)
        wake = ctl.next_wakeup()
        if wake is not None and wake > now:
            push(wake, "tick", None)
    end = now + 60.0
    apply(ctl.tick(end), end)
    assert running == {}
    assert ctl.in_flight == 0
    assert set(answers) == set(range(len(arrivals)))
    assert all(n == 1 for n in answers.values()), answers
    assert alive == {}
    assert ctl.instance_ids() == ()
    billed = sum((stop - start) * memory / 1024 for start, stop, memory in intervals)
    assert abs(ctl.meter.gb_seconds(end + 100) - billed) < 1e-6
    per_instance = ctl.meter.per_instance(end + 100)
    assert set(per_instance) == set(started)
    for iid, (spawned, memory) in started.items():
        expected = (stopped[iid] - spawned) * memory / 1024
        assert abs(per_instance[iid] - expected) < 1e-6, (iid, memory)
    counters = ctl.counters
    assert counters.served + counters.failed + counters.rejected == len(arrivals)
