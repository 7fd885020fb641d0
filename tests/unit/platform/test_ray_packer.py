"""The pure parts of sealserve on Ray Serve: FnPacker over replicas, the autoscaler, the
mapping to Ray Serve's config.  No Ray runs here (tests/integration/ray runs it)."""

from __future__ import annotations

import json
import threading
import types
from pathlib import Path

import pytest

from sealserve.packer import make_policy
from sealserve.platform import PlatformConfig
from sealserve.platform.ray import PackerAutoscaler, RayOptions, ReplicaPacker, ReplicaView
from sealserve.platform.ray._autoscale import DEMAND_TTL_S, demand_from
from sealserve.platform.ray._demand import DemandBoard


def packer(policy: str = "sesemi", **config: object) -> ReplicaPacker:
    cfg = PlatformConfig(policy=policy, **config)  # type: ignore[arg-type]
    return ReplicaPacker(cfg, policy=make_policy(policy), model_memory_mb=lambda _m: 100.0)


def views(*ids: str, **stats: dict[str, object]) -> list[ReplicaView]:
    return [ReplicaView(i, stats.get(i, {})) for i in ids]


def test_replicas_join_the_group_and_a_request_goes_where_the_policy_says() -> None:
    p = packer(max_instances=2, instance_concurrency=2)
    reps = views("r-a", "r-b")
    first = p.route("k1", model="m1", replicas=reps, now=0.0, request_id="req-1")
    assert first in {"r-a", "r-b"}
    decision = p.decision_for("req-1")
    assert decision is not None
    assert decision.kind == "start"
    assert decision.load
    assert p.replica_for(decision.instance_id or 0) == first
    # Asked again (Ray Serve could not send it yet): the same replica.
    assert p.route("k1", model="m1", replicas=reps, now=0.1) == first
    p.completed("k1", 1.0)
    stats = p.snapshot(1.0)
    assert len(stats.instances) == 1  # the other replica is a spare, outside the group
    assert stats.counters["served"] == 1
    assert stats.counters["cold_starts"] == 1  # the policy started it: it took a spare
    assert {i.url for i in stats.instances} == {f"ray-replica://{first}"}
    inst = next(i for i in stats.instances if i.instance_id == decision.instance_id)
    assert inst.models == ("m1",)  # the first completion ended the load


def test_a_hot_model_claims_its_replica_under_sesemi() -> None:
    p = packer(max_instances=2, instance_concurrency=4)
    reps = views("r-a", "r-b")
    hot = [p.route(f"h{i}", model="hot", replicas=reps, now=0.0) for i in range(3)]
    assert len(set(hot)) == 1
    other = p.route("s1", model="sporadic", replicas=reps, now=0.0)
    assert other is not None
    assert other != hot[0]


def test_start_is_held_until_a_replica_comes_and_that_replica_is_the_new_instance() -> None:
    p = packer(policy="dedicated", max_instances=2, instance_concurrency=1)
    one = views("r-a")
    assert p.route("k1", model="m1", replicas=one, now=0.0, request_id="a") == "r-a"
    # Another model under "dedicated" needs its own instance: START, held (no spare).
    assert p.route("k2", model="m2", replicas=one, now=0.1, request_id="b") is None
    started = p.decision_for("b")
    assert started is not None
    assert started.kind == "start"
    assert p.snapshot(0.1).counters["cold_starts"] == 2
    # Ray Serve's autoscaler adds a replica: it is that instance.
    assert p.route("k2", model="m2", replicas=views("r-a", "r-b"), now=2.0) == "r-b"
    assert p.instance_for("r-b") == started.instance_id


def test_a_start_whose_replica_never_comes_is_given_up_and_routed_again() -> None:
    p = packer(policy="dedicated", max_instances=2, instance_concurrency=1, start_timeout_s=5.0)
    one = views("r-a")
    p.route("k1", model="m1", replicas=one, now=0.0)
    assert p.route("k2", model="m2", replicas=one, now=0.0) is None
    assert p.route("k2", model="m2", replicas=one, now=6.0) is None  # given up, routed again
    stats = p.snapshot(6.0)
    assert stats.counters["failed_starts"] == 1
    assert stats.counters["rerouted"] == 1


def test_a_replica_that_goes_away_leaves_the_group_and_its_requests_are_routed_again() -> None:
    p = packer(max_instances=2, instance_concurrency=2)
    target = p.route("k1", model="m1", replicas=views("r-a", "r-b"), now=0.0)
    assert target is not None
    survivor = "r-b" if target == "r-a" else "r-a"
    # Ray Serve asks again after the replica died: it goes to the one left.
    assert p.route("k1", model="m1", replicas=views(survivor), now=1.0) == survivor
    stats = p.snapshot(1.0)
    assert len(stats.instances) == 1
    assert stats.instances[0].url == f"ray-replica://{survivor}"
    assert stats.counters["instances_replaced"] == 1
    p.completed("k1", 2.0)
    assert p.snapshot(2.0).in_flight == 0


def test_a_runtime_restart_reported_in_routing_stats_replaces_the_instance() -> None:
    p = packer(max_instances=1, instance_concurrency=2)
    stats_1 = {"r-a": {"runtime_generation": 1, "models": []}}
    p.route("k1", model="m1", replicas=views("r-a", **stats_1), now=0.0)
    p.completed("k1", 1.0)
    before = p.instance_for("r-a")
    stats_2 = {"r-a": {"runtime_generation": 2, "models": []}}
    p.route("k2", model="m1", replicas=views("r-a", **stats_2), now=2.0, request_id="x")
    assert p.instance_for("r-a") != before
    decision = p.decision_for("x")
    assert decision is not None
    assert decision.load  # its models went with the old runtime
    assert p.snapshot(2.0).counters["runtime_failures"] == 1


def test_a_held_request_that_is_cancelled_leaves_the_router() -> None:
    p = packer(max_instances=1, instance_concurrency=1)
    one = views("r-a")
    assert p.route("k1", model="m1", replicas=one, now=0.0) == "r-a"
    assert p.route("k2", model="m1", replicas=one, now=0.0) is None  # full: held
    assert p.waiting == 1
    p.cancel("k2", 1.0)
    assert p.waiting == 0
    p.completed("k1", 1.0)
    assert p.snapshot(1.0).in_flight == 0


def test_a_model_no_instance_can_hold_goes_to_any_replica_unpacked() -> None:
    cfg = PlatformConfig(policy="sealserve", max_instances=1)
    p = ReplicaPacker(cfg, policy=make_policy("sealserve"), model_memory_mb=lambda _m: 1e9)
    assert p.route("k", model="huge", replicas=views("r-a"), now=0.0) == "r-a"
    assert p.decision_for("k") is None


@pytest.mark.parametrize(
    ("current", "target", "queued", "idle", "want"),
    [
        (0, 0, 0.0, [], 0),
        (1, 1, 2.0, [], 2),  # the router holds requests: one more
        (1, 2, 3.0, [], 2),  # one is on its way: no more
        (2, 2, 1.0, [], 2),  # at the maximum
        (2, 2, 0.0, [200.0, 5.0], 1),  # one idle past its keep-alive
        (2, 2, 0.0, [200.0, 300.0], 0),  # both: scale to zero
    ],
)
def test_the_autoscaler(
    current: int, target: int, queued: float, idle: list[float], want: int
) -> None:
    scaler = PackerAutoscaler(keep_alive_s=180.0, max_replicas=2)
    now = 1000.0
    last_used = {f"r{i}": now - s for i, s in enumerate(idle)}
    assert (
        scaler.decide(current=current, target=target, queued=queued, last_used=last_used, now=now)
        == want
    )


def test_the_autoscaler_adds_no_replica_for_a_queue_its_last_scale_up_served() -> None:
    scaler = PackerAutoscaler(keep_alive_s=180.0, max_replicas=4, cooldown_s=15.0)
    common = {"current": 1, "target": 1, "queued": 1.0, "last_used": {}}
    assert scaler.decide(**common, now=100.0, last_scale_up=95.0) == 1  # type: ignore[arg-type]
    assert scaler.decide(**common, now=100.0, last_scale_up=80.0) == 2  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "target", "queued", "demand", "idle", "want"),
    [
        (0, 0, 3.0, 0, [], 1),  # from zero: the router is asked nothing until one runs
        (0, 1, 3.0, 0, [], 1),  # that one is on its way
        (0, 1, 0.0, 0, [], 0),  # nothing queued any more: not started
        (1, 1, 9.0, 0, [], 1),  # requests held by a WAIT: no replica the packer did not ask for
        (0, 0, 9.0, 2, [], 1),  # from zero, one: the first START takes it
        (1, 1, 9.0, 1, [], 2),  # a start waits for a replica: one more
        (1, 2, 9.0, 1, [], 2),  # the one it waits for is on its way
        (2, 2, 9.0, 3, [], 2),  # capped
        (2, 2, 0.0, 0, [200.0, 5.0], 1),  # one idle past its keep-alive
        (2, 3, 0.0, 0, [], 2),  # a start nobody waits for any more is called off
    ],
)
def test_the_autoscaler_follows_the_routers_demand(
    current: int, target: int, queued: float, demand: int, idle: list[float], want: int
) -> None:
    scaler = PackerAutoscaler(keep_alive_s=180.0, max_replicas=2)
    now = 1000.0
    last_used = {f"r{i}": now - s for i, s in enumerate(idle)}
    got = scaler.decide(
        current=current, target=target, queued=queued, last_used=last_used, now=now, demand=demand
    )
    assert got == want


def test_several_starts_waiting_get_their_replicas_at_once() -> None:
    scaler = PackerAutoscaler(keep_alive_s=180.0, max_replicas=8)
    kw = {"queued": 9.0, "last_used": {}, "now": 1.0}
    assert scaler.decide(current=1, target=1, demand=3, **kw) == 4  # type: ignore[arg-type]
    assert scaler.decide(current=2, target=4, demand=2, **kw) == 4  # type: ignore[arg-type]


def test_the_demand_records_are_summed_and_hostile_or_stale_ones_ignored() -> None:
    now = 1000.0

    def rec(waiting: object, at: float) -> bytes:
        return json.dumps({"starts_waiting": waiting, "at": at}).encode()

    assert demand_from({}, now) is None
    assert demand_from({"a": rec(2, now - 1), "b": rec(1, now - 2)}, now) == 3
    assert demand_from({"a": rec(2, now - DEMAND_TTL_S - 1)}, now) is None  # a gateway gone
    hostile = {
        "a": b"not json",
        "b": None,
        "c": rec(-1, now),
        "d": rec(True, now),
        "e": rec("3", now),
        "f": b'{"starts_waiting": 1, "at": "NaN"}',
        "g": b"[]",
        "h": rec(0, now),
    }
    assert demand_from(hostile, now) == 0


def ctx(**fields: object) -> types.SimpleNamespace:
    base: dict[str, object] = {
        "app_name": "app",
        "deployment_name": "dep",
        "aggregated_metrics": {},
        "current_time": 1000.0,
        "running_replicas": ["r1"],
        "current_num_replicas": 1,
        "target_num_replicas": 1,
        "total_queued_requests": 5.0,
        "last_scale_up_time": None,
    }
    base.update(fields)
    return types.SimpleNamespace(**base)


def test_the_autoscaler_reads_the_demand_of_its_deployment_at_most_twice_a_second() -> None:
    reads: list[str] = []
    record = json.dumps({"starts_waiting": 1, "at": 999.0}).encode()

    def read(prefix: str) -> dict[str, bytes | None]:
        reads.append(prefix)
        return {prefix + "gw-1": record}

    scaler = PackerAutoscaler(keep_alive_s=60.0, max_replicas=4, read_records=read)
    assert scaler(ctx()) == (2, {})
    assert scaler(ctx(current_time=1000.2)) == (2, {})  # the same reading
    assert reads == ["demand/app/dep/"]
    assert scaler(ctx(current_time=1000.6)) == (2, {})
    assert len(reads) == 2


def test_the_autoscaler_scales_on_the_queue_when_the_demand_cannot_be_read() -> None:
    def broken(prefix: str) -> dict[str, bytes | None]:
        raise ConnectionError("the GCS does not answer")

    scaler = PackerAutoscaler(keep_alive_s=60.0, max_replicas=4, read_records=broken)
    assert scaler(ctx()) == (2, {})  # the queue, as without a router
    assert scaler(ctx(total_queued_requests=0.0, current_time=1001.0)) == (1, {})


def test_the_demand_board_publishes_changes_and_removes_its_record() -> None:
    written: list[tuple[str, bytes | None]] = []
    changed = threading.Condition()

    def write(key: str, value: bytes | None) -> None:
        with changed:
            written.append((key, value))
            changed.notify_all()

    board = DemandBoard("app", "dep", heartbeat_s=60.0, write=write, clock=lambda: 5.0)
    assert board.key.startswith("demand/app/dep/")
    board.note(2)
    with changed:
        assert changed.wait_for(lambda: len(written) >= 1, timeout=10)
    key, value = written[0]
    assert key == board.key
    assert value is not None
    assert json.loads(value) == {"starts_waiting": 2, "at": 5.0}
    with changed:
        assert changed.wait_for(lambda: board.published == 2, timeout=10)
    board.note(2)  # no change: nothing written before the heartbeat
    board.note(0)
    with changed:
        assert changed.wait_for(lambda: board.published == 0, timeout=10)
    assert [json.loads(v or b"")["starts_waiting"] for _, v in written] == [2, 0]
    board.close()
    assert written[-1] == (board.key, None)
    board.note(3)  # closed: nothing more
    assert len([w for w in written if w[1] is not None]) == 2


def test_a_replica_ray_removes_stops_being_billed_at_once_and_the_demand_follows() -> None:
    p = packer(policy="dedicated", max_instances=3, instance_concurrency=1)
    assert p.route("k1", model="m1", replicas=views("r-a"), now=0.0) == "r-a"
    p.completed("k1", 1.0)
    assert p.route("k2", model="m2", replicas=views("r-a"), now=1.0) is None
    assert p.starts_waiting == 1  # the autoscaler may add one replica, no more
    p.sync(views("r-a", "r-b"), 2.0)  # Ray added it: it is that instance at once
    assert p.starts_waiting == 0
    assert p.instance_for("r-b") is not None
    billed = p.snapshot(10.0).gb_seconds
    p.sync(views("r-b"), 10.0)  # Ray removed r-a (scale down): not billed from now on
    assert p.instance_for("r-a") is None
    later = p.snapshot(20.0)
    assert len(later.instances) == 1
    assert later.counters["scaled_to_zero"] == 1
    per_second = later.instances[0].memory_mb / 1024
    assert later.gb_seconds == pytest.approx(billed + 10 * per_second)


def test_the_autoscaler_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="keep_alive_s"):
        PackerAutoscaler(keep_alive_s=0, max_replicas=1)
    with pytest.raises(ValueError, match="max_replicas"):
        PackerAutoscaler(keep_alive_s=1, max_replicas=0)
    with pytest.raises(ValueError, match="cooldown_s"):
        PackerAutoscaler(keep_alive_s=1, max_replicas=1, cooldown_s=-1)


def options(**changes: object) -> RayOptions:
    base = RayOptions(
        store_dir=Path("store"),
        keyservice_url="http://127.0.0.1:8470",
        tee_socket=Path("tee.sock"),
        platform_key_file=Path("platform.pub"),
        keyservice_measurement="ab" * 32,
        run_dir=Path("run"),
        platform=PlatformConfig(
            policy="sesemi", max_instances=3, instance_concurrency=2, keep_alive_s=90.0
        ),
    )
    return base.replace(**changes)


def test_the_mapping_to_ray_serve() -> None:
    o = options()
    d = o.deployment_options()
    assert d["max_ongoing_requests"] == 2
    auto = d["autoscaling_config"]
    assert auto["min_replicas"] == 0
    assert auto["max_replicas"] == 3
    assert auto["policy"]["policy_function"].endswith(":PackerAutoscaler")
    assert auto["policy"]["policy_kwargs"] == {
        "keep_alive_s": 90.0,
        "max_replicas": 3,
        "cooldown_s": 15.0,
    }
    router = d["request_router_config"]
    assert router["request_router_class"].endswith(":FnPackerRequestRouter")
    assert router["request_router_kwargs"]["platform"]["policy"] == "sesemi"
    assert (router["initial_backoff_s"], router["max_backoff_s"]) == (0.005, 0.1)
    assert router["backoff_multiplier"] == 2.0
    assert o.replica_config()["concurrency"] == 2
    assert o.replica_config()["tee_socket"] == "tee.sock"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"keyservice_url": "ftp://x"}, "keyservice_url"),
        ({"min_replicas": 4}, "min_replicas"),
        ({"replica_num_cpus": -1.0}, "replica_num_cpus"),
        ({"instance_log_level": "LOUD"}, "instance_log_level"),
        ({"keyservice_measurement": ""}, "keyservice_measurement"),
        ({"router_backoff_s": (0.0, 0.1)}, "router_backoff_s"),
        ({"router_backoff_s": (0.2, 0.1)}, "router_backoff_s"),
    ],
)
def test_options_are_checked(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        options(**changes)


def test_a_start_whose_replica_never_comes_is_given_up_without_traffic() -> None:
    p = packer(policy="dedicated", max_instances=2, instance_concurrency=1, start_timeout_s=5.0)
    assert p.route("k1", model="m1", replicas=views("r-a"), now=0.0) == "r-a"
    assert p.route("k2", model="m2", replicas=views("r-a"), now=0.0) is None
    assert p.expire(4.0) == 1  # still waiting for its replica
    assert p.expire(6.0) == 0  # given up: the autoscaler is asked for nothing more
    assert p.snapshot(6.0).counters["failed_starts"] == 1


def test_the_demand_board_refreshes_its_value_at_each_heartbeat() -> None:
    written: list[int] = []
    changed = threading.Condition()
    values = iter([3, 0, 0, 0, 0, 0])

    def write(key: str, value: bytes | None) -> None:
        if value is not None:
            with changed:
                written.append(json.loads(value)["starts_waiting"])
                changed.notify_all()

    board = DemandBoard("app", "dep", heartbeat_s=0.05, write=write, refresh=lambda: next(values))
    board.note(1)
    with changed:
        assert changed.wait_for(lambda: 0 in written, timeout=10)
    board.close()
    assert written[0] == 3  # the refreshed value, not the noted one
