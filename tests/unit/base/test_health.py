"""Liveness and readiness: checks in one place, answers in the Open Inference Protocol's shape."""

from __future__ import annotations

import json

from sealserve._health import LIVE_PATH, READY_PATH, Health


def test_the_first_failing_check_is_the_answer_and_readiness_includes_liveness() -> None:
    state = {"live": True, "ready": True, "saturated": False}
    health = Health(
        live_checks=(lambda: None if state["live"] else "the runtime failed",),
        ready_checks=(lambda: None if state["ready"] else "starting",),
    ).with_ready(lambda: "saturated" if state["saturated"] else None)
    assert (health.live().status, json.loads(health.live().body)) == (200, {"live": True})
    assert (health.ready().status, json.loads(health.ready().body)) == (200, {"ready": True})
    state["saturated"] = True
    answer = health.ready()
    assert (answer.status, json.loads(answer.body)) == (
        503,
        {"ready": False, "reason": "saturated"},
    )
    assert answer.headers == {"retry-after": "1"}
    state["ready"] = False
    assert json.loads(health.ready().body)["reason"] == "starting"
    state["live"] = False
    assert json.loads(health.ready().body)["reason"] == "the runtime failed"
    assert json.loads(health.live().body) == {"live": False, "reason": "the runtime failed"}
    assert health.answer(LIVE_PATH) == health.live()
    assert health.answer(READY_PATH) == health.ready()
    assert health.answer("/healthz") is None
    assert Health().ready().status == 200
