"""End to end through the gateway against the real stack: many models on few instances with
concurrent users, access control, an unknown model, and recovery from a killed runtime."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealserve.client import GatewayClient
from sealserve.errors import AccessDenied, ModelNotAvailable, SealserveError
from sealserve.instance import InstanceClient
from sealserve.runtime import BAD_INPUT
from tests.integration.e2e.conftest import Stack
from tests.unit.runtime.graphs import dense_model, plain_run, slow_model

pytestmark = pytest.mark.integration


def x(n: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"X": np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)}


def test_three_models_on_two_instances_with_concurrent_users(stack: Stack, tmp_path: Path) -> None:
    alice, bob = stack.new_user(), stack.new_user()
    onnx = [dense_model(100 + i, inputs=256, outputs=32) for i in range(3)]
    models = [
        stack.add_model(f"dense-{i}", o, tmp_path, grant=[alice, bob]) for i, o in enumerate(onnx)
    ]
    jobs = [(user, i, seed) for seed in range(8) for user in (alice, bob) for i in range(3)]

    def one(job: tuple[Any, int, int]) -> tuple[int, int, np.ndarray[Any, Any], Any]:
        user, i, seed = job
        with GatewayClient(stack.gateway_url) as client:
            result = client.infer(
                models[i], x(256, seed), user_id=user.principal_id, key=stack.key(user, models[i])
            )
        return i, seed, result.outputs["Y"], result

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, jobs))
    assert len(results) == 48
    for i, seed, y, _ in results:
        np.testing.assert_allclose(y, plain_run(onnx[i], x(256, seed))["Y"], rtol=1e-5, atol=1e-5)
    instances = {r.instance_id for *_, r in results}
    assert instances <= {0, 1, 2, 3}
    stats = stack.deployment.platform.stats()  # type: ignore[union-attr]
    assert len(stats.instances) == 2  # three models, two instances (the platform's maximum)
    assert stats.counters["cold_starts"] >= 1
    assert stats.counters["served"] >= 48
    assert stats.counters["failed"] == 0
    # Every model is resident somewhere, and the router said why it put each request where.
    resident = {m for inst in stats.instances for m in inst.models}
    assert set(models) <= resident
    # Each instance runs at one of the router's sizes, its runtime with that size's budget.
    config = stack.deployment.options.platform_config
    shapes = {(shape.memory_mb, shape.budget_mb) for shape in config.shapes}
    for inst in stats.instances:
        assert (inst.memory_mb, inst.budget_mb) in shapes
        assert inst.url is not None
        with InstanceClient(inst.url) as host:
            budget = host.stats()["runtime"]["models"]["budget_bytes"]
        assert budget == int(inst.budget_mb) << 20
    kinds = {r.route.kind for *_, r in results if r.route is not None}
    assert "start" in kinds
    assert "run" in kinds
    assert all(r.route.reason for *_, r in results if r.route is not None)


def test_a_user_without_a_grant_is_denied_and_an_unknown_model_is_named(
    stack: Stack, tmp_path: Path
) -> None:
    granted, stranger = stack.new_user(), stack.new_user()
    model = stack.add_model("dense-acl", dense_model(7), tmp_path, grant=[granted])
    # The stranger has a request key for the model, but the owner granted it nothing.
    from sealserve.crypto import RequestKey

    key = RequestKey.generate()
    stranger.put_request_key(model, key, stack.runtime_policy)
    with GatewayClient(stack.gateway_url) as client:
        with pytest.raises(AccessDenied) as info:
            client.infer(model, x(64, 0), user_id=stranger.principal_id, key=key)
        assert str(info.value) == "access denied"
        assert not info.value.retryable
        ok = client.infer(
            model, x(64, 0), user_id=granted.principal_id, key=stack.key(granted, model)
        )
        np.testing.assert_allclose(ok.outputs["Y"], plain_run(dense_model(7), x(64, 0))["Y"],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        missing = stack.owner.model_id("never-uploaded")
        with pytest.raises(ModelNotAvailable, match="never-uploaded"):
            client.infer(missing, x(64, 0), user_id=granted.principal_id, key=key)
        assert any(m["model_id"] == model for m in client.models())


def test_an_input_that_does_not_fit_the_model_is_a_400_not_a_platform_error(
    stack: Stack, tmp_path: Path
) -> None:
    user = stack.new_user()
    model = stack.add_model("dense-shape", dense_model(8), tmp_path, grant=[user])
    with GatewayClient(stack.gateway_url) as client:
        with pytest.raises(ValueError, match="bad_request") as info:
            client.infer(model, x(63, 0), user_id=user.principal_id, key=stack.key(user, model))
        assert BAD_INPUT in str(info.value)  # the runtime's fixed text, no shape or node name
        ok = client.infer(model, x(64, 0), user_id=user.principal_id, key=stack.key(user, model))
        assert ok.outputs["Y"].shape == (1, 16)


def test_a_revoked_grant_stops_being_served_within_the_check_bound(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 10, item 9, with real processes: the runtime polls the KeyService through its
    host's relay, so a revoke takes effect within ``revocation_check_s`` (5 s), not the key
    cache's TTL (300 s)."""
    from sealserve.config import KeyServiceSettings

    user = stack.new_user()
    model = stack.add_model("dense-revoke", dense_model(19), tmp_path, grant=[user])
    key = stack.key(user, model)
    with GatewayClient(stack.gateway_url) as client:
        client.infer(model, x(64, 1), user_id=user.principal_id, key=key)
        stack.owner.revoke("dense-revoke", user.principal_id)
        revoked_at = time.monotonic()
        # The bound passes (a wait is what this test is about: revocation latency in real time).
        time.sleep(KeyServiceSettings().revocation_check_s + 0.2)
        with pytest.raises(AccessDenied):
            client.infer(model, x(64, 2), user_id=user.principal_id, key=key)
        assert time.monotonic() - revoked_at < KeyServiceSettings().release_ttl_s / 10


def test_a_runtime_killed_under_load_recovers_and_no_request_is_lost_silently(
    stack: Stack, tmp_path: Path
) -> None:
    user = stack.new_user()
    onnx = slow_model(size=384, depth=48)
    model = stack.add_model("slow", onnx, tmp_path, grant=[user])
    key = stack.key(user, model)
    inputs = {"X": np.random.default_rng(1).standard_normal((384, 384)).astype(np.float32)}
    expected = plain_run(onnx, inputs)["Y"]
    with GatewayClient(stack.gateway_url) as client:
        client.infer(model, inputs, user_id=user.principal_id, key=key)  # warm
    stats = stack.deployment.platform.stats()  # type: ignore[union-attr]
    holder = next(i for i in stats.instances if model in i.models)
    runtime_pid = _runtime_pid(holder.url)

    outcomes: dict[str, int] = {"ok": 0, "retryable": 0}
    lost: list[BaseException] = []
    lock = threading.Lock()
    steady = threading.Event()
    killed = threading.Event()

    def one(_: int) -> None:
        try:
            with GatewayClient(stack.gateway_url) as client:
                result = client.infer(model, inputs, user_id=user.principal_id, key=key)
            np.testing.assert_allclose(result.outputs["Y"], expected, rtol=1e-4, atol=1e-4)
            with lock:
                outcomes["ok"] += 1
                if outcomes["ok"] >= 4:
                    steady.set()
        except SealserveError as exc:
            with lock:
                if exc.retryable:
                    outcomes["retryable"] += 1
                else:
                    lost.append(exc)
        except Exception as exc:  # anything else is a request lost without a reason
            with lock:
                lost.append(exc)

    platform = stack.deployment.platform
    assert platform is not None
    failures_before = platform.stats().counters["runtime_failures"]

    def in_flight_on_holder() -> int:
        return sum(
            i.in_flight for i in platform.stats().instances if i.instance_id == holder.instance_id
        )

    def kill_under_load() -> None:
        # In steady state, kill the runtime while the platform has requests running on it
        # (each runs ~0.1-0.3 s in the runtime), so the kill lands on work in flight.
        if not steady.wait(120):
            return
        deadline = time.monotonic() + 60
        while in_flight_on_holder() < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(runtime_pid, signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_under_load)
    killer.start()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(24)))
    killer.join()
    assert killed.is_set()
    print(f"\nkilled a runtime under load: {outcomes['ok']} succeeded, "
          f"{outcomes['retryable']} got a retryable error, {len(lost)} lost")  # fmt: skip
    assert lost == []
    assert outcomes["ok"] + outcomes["retryable"] == 24
    # The kill hit requests in flight: the platform counted requests whose runtime died.
    assert platform.stats().counters["runtime_failures"] > failures_before
    # The host restarted its runtime: the next requests succeed.
    with GatewayClient(stack.gateway_url) as client:
        for _ in range(3):
            result = client.infer(model, inputs, user_id=user.principal_id, key=key, retries=5)
            np.testing.assert_allclose(result.outputs["Y"], expected, rtol=1e-4, atol=1e-4)
    assert _runtime_pid(holder.url) != runtime_pid


def test_a_killed_instance_host_is_replaced(stack: Stack, tmp_path: Path) -> None:
    user = stack.new_user()
    model = stack.add_model("dense-host", dense_model(9), tmp_path, grant=[user])
    key = stack.key(user, model)
    with GatewayClient(stack.gateway_url) as client:
        client.infer(model, x(64, 1), user_id=user.principal_id, key=key)
        platform = stack.deployment.platform
        assert platform is not None
        before = platform.stats()
        victim = next(i for i in before.instances if model in i.models)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while any(i.instance_id == victim.instance_id for i in platform.stats().instances):
            assert time.monotonic() < deadline, "the dead instance was not replaced"
            time.sleep(0.2)
        assert platform.stats().counters["instances_replaced"] >= 1
        result = client.infer(model, x(64, 1), user_id=user.principal_id, key=key, retries=3)
        np.testing.assert_allclose(result.outputs["Y"], plain_run(dense_model(9), x(64, 1))["Y"],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        assert result.instance_id != victim.instance_id


def _runtime_pid(url: str | None) -> int:
    from sealserve.instance import InstanceClient

    assert url is not None
    with InstanceClient(url) as instance:
        return int(instance.stats()["supervisor"]["runtime_pid"])
