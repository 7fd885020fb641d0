"""Decisions, and the router that checks and applies them and keeps the policy informed."""

from __future__ import annotations

from typing import Any

import pytest

from sealserve.errors import PackerError
from sealserve.packer import (
    Decision,
    DecisionKind,
    FunctionGroup,
    GroupConfig,
    Instance,
    Policy,
    Router,
    RouteRequest,
)

MB = {"a": 300.0, "b": 300.0}


class Scripted(Policy):
    """A policy that returns the decisions it is given and records every callback."""

    name = "scripted"

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.calls: list[tuple[Any, ...]] = []

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        return self.decisions.pop(0)

    def on_arrival(self, request: RouteRequest, now: float) -> None:
        self.calls.append(("arrival", request.request_id, now))

    def on_routed(
        self, request: RouteRequest, decision: Decision, group: FunctionGroup, now: float
    ) -> None:
        self.calls.append(("routed", request.request_id, decision.kind, decision.instance_id))

    def on_ready(self, instance: Instance, cold_start_s: float, now: float) -> None:
        self.calls.append(("ready", instance.id, cold_start_s))

    def on_loaded(self, instance: Instance, model: str, load_s: float, now: float) -> None:
        self.calls.append(("loaded", instance.id, model, load_s))

    def on_complete(
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        self.calls.append(("complete", request.request_id, instance.id, exec_s))

    def on_stopped(self, instance: Instance, now: float) -> None:
        self.calls.append(("stopped", instance.id))


def router(*decisions: Decision, **kw: Any) -> tuple[Router, Scripted]:
    policy = Scripted(*decisions)
    cfg = GroupConfig(budget_mb=1000.0, concurrency=2, keep_alive_s=10.0, **kw)
    return Router(policy, cfg, model_memory_mb=MB.__getitem__), policy


def test_decisions_check_their_fields() -> None:
    with pytest.raises(ValueError, match="RUN decision needs an instance_id"):
        Decision(kind=DecisionKind.RUN, model="a")
    with pytest.raises(ValueError, match="START decision implies a cold start"):
        Decision(kind=DecisionKind.START, model="a")
    with pytest.raises(ValueError, match="WAIT decision names no instance"):
        Decision(kind=DecisionKind.WAIT, model="a", load=True)
    with pytest.raises(ValueError, match="model must be a non-empty name"):
        RouteRequest(1, "", 0.0)
    run = Decision.run("a", 3, load=True, evict=("b",), reason="warm")
    assert run.describe() == "a: run on i3 [load; evict b]: warm"
    assert Decision.start("a", reason="cold").describe() == "a: start a new instance [load]: cold"
    assert Decision.wait("a", reason="full").describe() == "a: wait: full"


def test_a_request_goes_start_ready_load_run_done_expire() -> None:
    r, policy = router(Decision.start("a", reason="first"))
    routed = r.route(RouteRequest(1, "a", 0.0), 0.0)
    assert routed.decision.kind is DecisionKind.START
    assert routed.decision.instance_id == 0
    assert (routed.loads, routed.run_now) == ((), False)
    assert r.instance_ready(0, 1.0).loads == ("a",)
    assert r.model_loaded(0, "a", 1.5).run == (1,)
    r.request_done(1, 1.6)
    assert r.expire(11.5) == ()
    assert r.expire(11.6) == (0,)
    assert policy.calls == [
        ("arrival", 1, 0.0),
        ("routed", 1, DecisionKind.START, 0),
        ("ready", 0, 1.0),
        ("loaded", 0, "a", 0.5),
        ("complete", 1, 0, pytest.approx(0.1)),
        ("stopped", 0),
    ]
    assert r.decisions[DecisionKind.START] == 1
    assert r.recent[-1].instance_id == 0


def test_a_waiting_request_is_routed_again_with_its_attempt() -> None:
    r, policy = router(Decision.wait("a", reason="full"), Decision.start("a", reason="now"))
    assert r.route(RouteRequest(7, "a", 0.0), 0.0).decision.kind is DecisionKind.WAIT
    assert r.group.waiting_count("a") == 1
    r.route(RouteRequest(7, "a", 0.0), 2.0)
    assert r.group.waiting_count() == 0
    assert [c[0] for c in policy.calls] == ["arrival", "routed", "routed"]
    with pytest.raises(PackerError, match="already routed"):
        r.route(RouteRequest(7, "a", 0.0), 3.0)


def test_a_waiting_request_can_be_cancelled() -> None:
    r, _ = router(Decision.wait("a", reason="full"))
    r.route(RouteRequest(1, "a", 0.0), 0.0)
    r.cancel(1)
    assert r.group.waiting_count() == 0
    with pytest.raises(PackerError, match="not waiting"):
        r.cancel(1)


def test_a_decision_the_group_cannot_honour_is_refused() -> None:
    r, _ = router(
        Decision.start("a", reason="one"),
        Decision.run("a", 0, load=False, reason="two"),
        Decision.run("a", 0, load=False, reason="three: the instance is full"),
    )
    r.route(RouteRequest(1, "a", 0.0), 0.0)
    r.route(RouteRequest(2, "a", 0.0), 0.0)
    with pytest.raises(PackerError, match="cannot take it now"):
        r.route(RouteRequest(3, "a", 0.0), 0.0)


def test_a_decision_that_misjudges_the_load_is_refused() -> None:
    r, _ = router(Decision.start("a", reason="one"), Decision.run("b", 0, load=False, reason=""))
    r.route(RouteRequest(1, "a", 0.0), 0.0)
    with pytest.raises(PackerError, match="expected load=False"):
        r.route(RouteRequest(2, "b", 0.0), 0.0)


def test_a_decision_for_another_model_is_refused() -> None:
    r, _ = router(Decision.start("b", reason="wrong model"))
    with pytest.raises(PackerError, match="not the request's model 'a'"):
        r.route(RouteRequest(1, "a", 0.0), 0.0)


def test_the_policy_resident_limit_caps_the_group() -> None:
    class One(Scripted):
        resident_limit = 1

    r = Router(One(), GroupConfig(max_models=5), model_memory_mb=MB.__getitem__)
    assert r.group.config.max_models == 1


def test_a_failed_instance_returns_its_requests_for_another_routing() -> None:
    r, policy = router(Decision.start("a", reason="one"), Decision.start("a", reason="again"))
    r.route(RouteRequest(1, "a", 0.0), 0.0)
    (lost,) = r.instance_failed(0, 0.5)
    assert lost.request_id == 1
    assert ("stopped", 0) in policy.calls
    routed = r.route(lost, 0.6)
    assert routed.decision.instance_id == 1
