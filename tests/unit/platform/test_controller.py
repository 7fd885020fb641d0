"""The platform controller's pure decisions, with time given by hand: cold starts, loads,
keep-alive and scale to zero, caps, deadlines, failures, metering."""

from __future__ import annotations

import math

import pytest

from sealserve.errors import (
    AccessDenied,
    CapacityExhausted,
    DeadlineExceeded,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    PlatformError,
)
from sealserve.packer import make_policy
from sealserve.platform import (
    Action,
    InstanceHealth,
    LoadModel,
    PlatformConfig,
    PlatformController,
    Reject,
    RequestPhase,
    RunRequest,
    StartInstance,
    StopInstance,
)

USER = "a" * 64
OTHER = "b" * 64
FAR = 1e9  # a deadline that never comes


def sizes(model: str) -> float:
    return {"big": 4000.0}.get(model, 100.0)


def controller(policy: str = "sealserve", **config: object) -> PlatformController:
    """A controller; without spares unless ``spares=`` is given (the tests of spares do)."""
    config.setdefault("spares", 0)
    cfg = PlatformConfig(policy=policy, **config)  # type: ignore[arg-type]
    return PlatformController(cfg, policy=make_policy(policy), model_memory_mb=sizes)


def only(actions: list[Action], kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]


def serve_first(ctl: PlatformController, rid: int, model: str, now: float) -> int:
    """Submit a request to an empty platform and carry it through start and load."""
    (start,) = ctl.submit(rid, model=model, user_id=USER, deadline=FAR, now=now)
    assert isinstance(start, StartInstance)
    (load,) = ctl.started(start.instance_id, now + 1)
    assert load == LoadModel(start.instance_id, model, USER, ())
    (run,) = ctl.loaded(start.instance_id, model, now + 2, load_s=1.0)
    assert run == RunRequest(rid, start.instance_id)
    return start.instance_id


def test_a_cold_request_starts_an_instance_loads_its_model_then_runs() -> None:
    ctl = controller()
    iid = serve_first(ctl, 1, "m", 0.0)
    assert ctl.phase(1) is RequestPhase.RUNNING
    record = ctl.decision_for(1)
    assert record is not None
    assert record.kind == "start"
    assert record.cold_start
    assert "start i0" in record.describe()
    assert ctl.waited_for_cold_start(1)
    assert ctl.finished(1, 2.5, exec_s=0.4, ok=True) == []
    assert ctl.phase(1) is None
    assert ctl.counters.cold_starts == 1
    assert ctl.counters.model_loads == 1
    assert ctl.counters.served == 1
    # Warm: the next request of the model runs at once, no load.
    (run,) = ctl.submit(2, model="m", user_id=USER, deadline=FAR, now=3.0)
    assert run == RunRequest(2, iid)
    assert ctl.decision_for(2) is not None


def test_requests_that_arrive_during_a_cold_start_wait_for_its_load_and_run_together() -> None:
    ctl = controller()
    (start,) = ctl.submit(1, model="m", user_id=USER, deadline=FAR, now=0.0)
    assert isinstance(start, StartInstance)
    assert ctl.submit(2, model="m", user_id=OTHER, deadline=FAR, now=0.1) == []
    assert ctl.phase(2) is RequestPhase.ASSIGNED
    (load,) = ctl.started(start.instance_id, 1.0)
    assert isinstance(load, LoadModel)
    assert load.user_id == USER  # the first request's user loads it
    runs = ctl.loaded(start.instance_id, "m", 2.0, load_s=1.0)
    assert sorted(r.request_id for r in only(runs, RunRequest)) == [1, 2]


def test_an_idle_instance_scales_to_zero_after_its_keep_alive_and_is_billed_until_then() -> None:
    ctl = controller(keep_alive_s=10.0, instance_memory_mb=2048, sizes_mb=())
    iid = serve_first(ctl, 1, "m", 0.0)
    ctl.finished(1, 3.0, exec_s=0.5, ok=True)
    assert ctl.next_wakeup() == pytest.approx(13.0)
    assert ctl.tick(12.9) == []
    assert ctl.tick(13.0) == [StopInstance(iid, "idle past its keep-alive")]
    assert ctl.instance_ids() == ()
    assert ctl.counters.scaled_to_zero == 1
    # Billed from spawn (t=0) to the stop (t=13): 2 GB x 13 s.
    assert ctl.meter.gb_seconds(100.0) == pytest.approx(2.0 * 13.0)
    assert ctl.meter.gb_seconds(100.0, iid) == pytest.approx(26.0)
    # From zero, the next request is a cold start again.
    (start,) = ctl.submit(2, model="m", user_id=USER, deadline=FAR, now=20.0)
    assert isinstance(start, StartInstance)
    assert start.instance_id != iid


def test_a_busy_instance_is_not_stopped_and_its_keep_alive_counts_from_its_last_request() -> None:
    ctl = controller(keep_alive_s=10.0)
    iid = serve_first(ctl, 1, "m", 0.0)
    assert ctl.tick(50.0) == []  # request 1 still runs
    ctl.finished(1, 50.0, exec_s=0.1, ok=True)
    assert ctl.tick(59.0) == []
    assert only(ctl.tick(60.0), StopInstance) == [StopInstance(iid, "idle past its keep-alive")]


def test_max_instances_holds_requests_until_an_instance_frees_up() -> None:
    # dedicated: each model its own function; the platform's cap applies to all of them.
    ctl = controller("dedicated", max_instances=1, keep_alive_s=5.0)
    serve_first(ctl, 1, "a", 0.0)
    assert ctl.submit(2, model="b", user_id=USER, deadline=FAR, now=1.0) == []
    assert ctl.phase(2) is RequestPhase.WAITING
    assert ctl.waiting == 1
    record = ctl.decisions[-1]
    assert record.kind == "wait"
    assert "maximum of 1 instances" in record.reason
    ctl.finished(1, 3.0, exec_s=0.1, ok=True)
    assert ctl.phase(2) is RequestPhase.WAITING  # a's instance is idle, but it is a's
    actions = ctl.tick(8.0)  # a's keep-alive ends: room for b
    assert only(actions, StopInstance)
    (start,) = only(actions, StartInstance)
    assert ctl.phase(2) is RequestPhase.ASSIGNED
    assert ctl.decision_for(2) is not None
    assert ctl.decision_for(2).waits == 2  # type: ignore[union-attr]  # routed twice before
    assert start.instance_id == 1


def test_per_instance_concurrency_caps_requests_on_an_instance() -> None:
    ctl = controller(max_instances=1, instance_concurrency=2)
    iid = serve_first(ctl, 1, "m", 0.0)
    assert ctl.submit(2, model="m", user_id=USER, deadline=FAR, now=3.0) == [RunRequest(2, iid)]
    assert ctl.submit(3, model="m", user_id=USER, deadline=FAR, now=3.0) == []
    assert ctl.phase(3) is RequestPhase.WAITING
    assert ctl.finished(1, 4.0, exec_s=0.1, ok=True) == [RunRequest(3, iid)]


def test_a_request_held_past_its_deadline_is_refused_retryably() -> None:
    ctl = controller(max_instances=1, instance_concurrency=1)
    serve_first(ctl, 1, "m", 0.0)
    assert ctl.submit(2, model="m", user_id=USER, deadline=10.0, now=3.0) == []
    assert ctl.next_wakeup() == pytest.approx(10.0)
    (reject,) = ctl.tick(10.0)
    assert isinstance(reject, Reject)
    assert reject.request_id == 2
    assert isinstance(reject.error, CapacityExhausted)
    assert reject.error.retryable
    assert ctl.waiting == 0
    assert ctl.counters.rejected == 1


def test_too_many_waiting_requests_are_refused_at_once() -> None:
    ctl = controller(max_instances=1, instance_concurrency=1, max_waiting=2)
    serve_first(ctl, 1, "m", 0.0)
    ctl.submit(2, model="m", user_id=USER, deadline=FAR, now=3.0)
    ctl.submit(3, model="m", user_id=USER, deadline=FAR, now=3.0)
    with pytest.raises(CapacityExhausted, match="2 requests already wait") as info:
        ctl.submit(4, model="m", user_id=USER, deadline=FAR, now=3.0)
    assert info.value.retryable
    assert ctl.waiting == 2
    assert ctl.phase(4) is None


def test_a_model_larger_than_an_instance_budget_is_refused() -> None:
    ctl = controller(memory_budget_mb=1024, sizes_mb=())
    with pytest.raises(MemoryBudgetExceeded, match="4000 MB") as info:
        ctl.submit(1, model="big", user_id=USER, deadline=FAR, now=0.0)
    assert "budget of the largest instance (1024 MB of 2048 MB)" in str(info.value)
    assert ctl.in_flight == 0
    sized = controller()  # 896, 1408 and 2048 MB: the largest holds 1664 MB of models
    with pytest.raises(MemoryBudgetExceeded, match=r"\(1664 MB of 2048 MB\).*platform\.sizes_mb"):
        sized.submit(1, model="big", user_id=USER, deadline=FAR, now=0.0)


def test_a_model_that_only_a_larger_size_holds_starts_that_size() -> None:
    ctl = controller(sizes_mb=(4800,))  # 4800 - 384 = 4416 MB for models
    (start,) = ctl.submit(1, model="big", user_id=USER, deadline=FAR, now=0.0)
    assert start == StartInstance(0, 4800, 4416.0, 4)
    # A policy that starts only the platform's own size refuses it.
    with pytest.raises(MemoryBudgetExceeded, match="4000 MB"):
        controller("lru-multiplex", sizes_mb=(4800,)).submit(
            1, model="big", user_id=USER, deadline=FAR, now=0.0
        )


def test_a_deadline_that_passes_during_a_cold_start_answers_at_once_and_frees_the_slot_later() -> (
    None
):
    ctl = controller()
    (start,) = ctl.submit(1, model="m", user_id=USER, deadline=5.0, now=0.0)
    assert isinstance(start, StartInstance)
    (reject,) = ctl.tick(5.0)
    assert isinstance(reject, Reject)
    assert isinstance(reject.error, DeadlineExceeded)
    assert "cold start" in str(reject.error)
    (load,) = ctl.started(start.instance_id, 8.0)  # the instance still loads the model
    assert isinstance(load, LoadModel)
    assert ctl.loaded(start.instance_id, "m", 9.0, load_s=1.0) == []  # nothing is sent
    assert ctl.in_flight == 0
    assert ctl.counters.failed == 1


def test_a_load_that_fails_for_the_model_fails_every_request_waiting_for_it() -> None:
    ctl = controller()
    (start,) = ctl.submit(1, model="m", user_id=USER, deadline=FAR, now=0.0)
    ctl.submit(2, model="m", user_id=OTHER, deadline=FAR, now=0.0)
    ctl.started(start.instance_id, 1.0)
    error = ModelNotAvailable("no such model")
    actions = ctl.loaded(start.instance_id, "m", 2.0, load_s=None, error=error)
    assert sorted(a.request_id for a in only(actions, Reject)) == [1, 2]
    assert not only(actions, RunRequest)
    assert ctl.counters.failed_loads == 1
    assert ctl.in_flight == 0


def test_a_load_refused_for_its_user_fails_that_users_requests_only() -> None:
    ctl = controller()
    (start,) = ctl.submit(1, model="m", user_id=USER, deadline=FAR, now=0.0)
    ctl.submit(2, model="m", user_id=OTHER, deadline=FAR, now=0.0)
    ctl.started(start.instance_id, 1.0)
    actions = ctl.loaded(start.instance_id, "m", 2.0, load_s=None, error=AccessDenied())
    (reject,) = only(actions, Reject)
    assert reject.request_id == 1
    assert isinstance(reject.error, AccessDenied)
    assert only(actions, RunRequest) == [RunRequest(2, start.instance_id)]


def test_an_instance_that_does_not_start_has_its_requests_routed_again_then_refused() -> None:
    ctl = controller(max_reroutes=1)
    (start,) = ctl.submit(1, model="m", user_id=USER, deadline=FAR, now=0.0)
    actions = ctl.start_failed(start.instance_id, 1.0, "exit status 1")
    assert StopInstance(start.instance_id, "did not start: exit status 1") in actions
    (again,) = only(actions, StartInstance)
    assert again.instance_id != start.instance_id
    assert ctl.counters.rerouted == 1
    actions = ctl.start_failed(again.instance_id, 2.0, "exit status 1")
    (reject,) = only(actions, Reject)
    assert isinstance(reject.error, PlatformError)
    assert reject.error.retryable
    assert ctl.counters.failed_starts == 2
    assert ctl.in_flight == 0
    assert ctl.instance_ids() == ()


def test_an_unhealthy_instance_is_replaced_and_requests_in_flight_end_by_themselves() -> None:
    ctl = controller(unhealthy_after=2)
    iid = serve_first(ctl, 1, "m", 0.0)
    assert ctl.health(iid, InstanceHealth.READY, 3.0) == []
    assert ctl.health(iid, InstanceHealth.RESTARTING, 3.0) == []  # the host restarts it
    assert ctl.health(iid, InstanceHealth.UNREACHABLE, 4.0) == []
    actions = ctl.health(iid, InstanceHealth.UNREACHABLE, 5.0)
    assert actions == [StopInstance(iid, "2 health checks failed")]
    assert ctl.counters.instances_replaced == 1
    assert ctl.instance_ids() == ()
    # Request 1 was running there: its own call fails, and that is all.
    assert ctl.finished(1, 6.0, exec_s=None, ok=False) == []
    assert ctl.counters.failed == 1
    (start,) = ctl.submit(2, model="m", user_id=USER, deadline=FAR, now=7.0)
    assert isinstance(start, StartInstance)


def test_a_gone_instance_is_replaced_at_once_and_requests_not_yet_sent_go_elsewhere() -> None:
    ctl = controller("lru-multiplex", max_instances=2, instance_concurrency=1)
    iid = serve_first(ctl, 1, "m", 0.0)
    ctl.submit(2, model="m", user_id=USER, deadline=FAR, now=3.0)  # i0 is full: scale out
    assert ctl.phase(2) is RequestPhase.ASSIGNED
    second = ctl.decision_for(2)
    assert second is not None
    assert second.instance_id is not None
    ctl.started(second.instance_id, 4.0)
    actions = ctl.health(second.instance_id, InstanceHealth.GONE, 4.5)
    assert StopInstance(second.instance_id, "its host gone") in actions
    # Request 2 had not run: it is routed again (a new cold start, i0 being full).
    assert only(actions, StartInstance)
    assert ctl.phase(2) is RequestPhase.ASSIGNED
    assert iid in ctl.instance_ids()


def test_shutdown_refuses_what_has_not_run_and_stops_every_instance() -> None:
    ctl = controller(max_instances=1, instance_concurrency=1)
    iid = serve_first(ctl, 1, "m", 0.0)
    ctl.submit(2, model="m", user_id=USER, deadline=FAR, now=3.0)
    actions = ctl.shutdown(4.0)
    (reject,) = only(actions, Reject)
    assert reject.request_id == 2
    assert reject.error.retryable
    assert only(actions, StopInstance) == [StopInstance(iid, "the platform is shutting down")]
    assert ctl.meter.running == 0


def test_stats_show_instances_meters_counters_and_decisions() -> None:
    ctl = controller(instance_memory_mb=1024, sizes_mb=())
    iid = serve_first(ctl, 1, "m", 0.0)
    stats = ctl.snapshot(2.0)
    assert stats.policy == "sealserve"
    (inst,) = stats.instances
    assert inst.instance_id == iid
    assert inst.models == ("m",)
    assert inst.in_flight == 1
    assert inst.gb_s == pytest.approx(2.0)
    assert stats.gb_seconds == pytest.approx(2.0)
    assert stats.decisions["start"] == 1
    doc = stats.to_json()
    assert doc["counters"]["cold_starts"] == 1
    assert doc["recent_decisions"][0]["text"].startswith("m: start i0 [load]")
    assert math.isclose(doc["instance_seconds"], 2.0)
    # The configuration shows the derived budget, the reserve and the shapes.
    assert doc["config"]["memory_budget_mb"] == 1024 - 384
    assert doc["config"]["reserve_mb"] == 384
    assert doc["config"]["shapes"] == [{"memory_mb": 1024, "budget_mb": 640.0}]


def test_submitting_a_request_id_twice_is_a_caller_error() -> None:
    ctl = controller()
    ctl.submit(1, model="m", user_id=USER, deadline=FAR, now=0.0)
    with pytest.raises(ValueError, match="request_id 1"):
        ctl.submit(1, model="m", user_id=USER, deadline=FAR, now=0.0)


def test_spares_are_started_billed_taken_and_stopped_by_the_controller() -> None:
    """Instances started one after another make the platform keep a spare (billed from its
    start); the next request that needs a new instance takes it, with no cold start; a spare
    nobody takes is stopped after the keep-alive."""
    ctl = controller("dedicated", spares=1, keep_alive_s=60.0, max_instances=8)
    serve_first(ctl, 1, "m1", 0.0)
    actions = ctl.submit(2, model="m2", user_id=USER, deadline=FAR, now=1.0)
    starts = only(actions, StartInstance)
    assert [s.spare for s in starts] == [False, True]  # m2's instance, then a spare
    spare = starts[1].instance_id
    assert ctl.counters.spare_starts == 1
    assert ctl.started(spare, 2.0) == []  # a ready spare holds no model and runs nothing
    assert spare in ctl.ready_instance_ids()
    taken = ctl.submit(3, model="m3", user_id=USER, deadline=FAR, now=3.0)
    assert all(s.spare for s in only(taken, StartInstance))  # no cold start for m3
    (load,) = only(taken, LoadModel)
    assert load.instance_id == spare
    assert ctl.counters.spares_taken == 1
    record = ctl.decision_for(3)
    assert record is not None
    assert "spare" in record.reason
    assert not ctl.waited_for_cold_start(3)
    assert ctl.meter.gb_seconds(3.0, spare) == pytest.approx(2048 / 1024 * 2.0)  # billed
    # ... and counted as the price of keeping it ready until m3 took it at 3.0 (the spare
    # started then has cost nothing yet).
    assert ctl.meter.spare_gb_seconds(3.0) == pytest.approx(2048 / 1024 * 2.0)
    assert ctl.snapshot(3.0).to_json()["spare_gb_seconds"] == pytest.approx(2048 / 1024 * 2.0)
    # The next spare (if one was started) is stopped once idle past the keep-alive.
    later = [s.instance_id for s in only(taken, StartInstance) if s.spare]
    for iid in later:
        ctl.started(iid, 4.0)
        stops = ctl.tick(100.0)
        assert StopInstance(iid, "a spare nobody took, idle past its keep-alive") in stops
        assert ctl.meter.spare_gb_seconds(200.0) == pytest.approx(
            2048 / 1024 * 2.0 + ctl.meter.gb_seconds(200.0, iid)
        )  # untaken: every second of it was the price of keeping it ready
