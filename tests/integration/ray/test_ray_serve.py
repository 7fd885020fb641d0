"""sealserve on Ray Serve: sealed inference through FnPacker's request router.

Two replicas of the ``SealedInstance`` deployment on a local Ray, each one instance (host and
sealed runtime launched through the simulated TEE daemon); requests go through the deployment
handle, so Ray Serve's router in this process is FnPacker's (``sesemi``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import numpy as np
import pytest

from sealserve.client import GatewayClient
from sealserve.crypto import RequestKey
from sealserve.errors import AccessDenied
from sealserve.gateway import Gateway, GatewayServer
from sealserve.instance import ModelStore
from sealserve.platform import ModelCatalog, PlatformResult
from sealserve.protocol import new_request_id, seal_input, unseal_output
from tests.integration.ray.conftest import RayStack
from tests.unit.runtime.graphs import dense_model, plain_run, slow_model

pytestmark = pytest.mark.integration


def x(n: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"X": np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)}


def test_two_users_two_models_through_the_gateway_on_ray(ray_stack: RayStack) -> None:
    alice, bob = ray_stack.new_user(), ray_stack.new_user()
    onnx = [dense_model(300 + i, inputs=128, outputs=16) for i in range(2)]
    models = [
        ray_stack.add_model(f"ray-dense-{i}", o, grant=[alice, bob]) for i, o in enumerate(onnx)
    ]
    catalog = ModelCatalog(ModelStore(ray_stack.options.store_dir))
    gateway = Gateway(ray_stack.platform, catalog)
    server = GatewayServer(gateway, host="127.0.0.1", port=0, log_level="WARNING")
    server.start()
    try:
        jobs = [(user, i, seed) for seed in range(3) for user in (alice, bob) for i in range(2)]

        def one(job: tuple[Any, int, int]) -> tuple[int, int, Any]:
            user, i, seed = job
            with GatewayClient(server.url) as client:
                result = client.infer(
                    models[i],
                    x(128, seed),
                    user_id=user.principal_id,
                    key=ray_stack.keys[(user.principal_id, models[i])],
                )
            return i, seed, result

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, jobs))
    finally:
        server.stop()
    assert len(results) == 12
    for i, seed, result in results:
        np.testing.assert_allclose(
            result.outputs["Y"], plain_run(onnx[i], x(128, seed))["Y"], rtol=1e-5, atol=1e-5
        )
        assert result.route is not None
        assert result.route.policy == "sesemi"
        assert result.route.reason
        assert result.instance_id in {r.instance_id for r in ray_stack.platform.stats().instances}


def _infer_all(
    ray_stack: RayStack, jobs: list[tuple[Any, str, dict[str, np.ndarray[Any, Any]]]]
) -> list[tuple[str, PlatformResult, dict[str, np.ndarray[Any, Any]]]]:
    """Send every (user, model, inputs) at once through the deployment handle; unseal."""

    async def one(user: Any, model: str, inputs: Any) -> tuple[str, PlatformResult, Any]:
        rid = new_request_id()
        key = ray_stack.keys[(user.principal_id, model)]
        sealed = seal_input(key, inputs, model_id=model, user_id=user.principal_id, request_id=rid)
        result = await ray_stack.platform.infer(
            model_id=model,
            user_id=user.principal_id,
            request_id=rid,
            sealed_input=sealed,
            deadline_s=time.time() + 60,
        )
        outputs = unseal_output(
            key, result.sealed_output, model_id=model, user_id=user.principal_id, request_id=rid
        )
        return model, result, outputs

    async def main() -> list[tuple[str, PlatformResult, Any]]:
        return list(await asyncio.gather(*(one(u, m, i) for u, m, i in jobs)))

    return asyncio.run(main())


def test_a_hot_models_requests_go_to_the_replica_it_claims(ray_stack: RayStack) -> None:
    """sesemi: a model with requests in flight claims one instance; a sporadic model takes
    another.  Every request ran on the replica of the instance FnPacker's decision named."""
    user = ray_stack.new_user()
    hot_onnx = slow_model(size=256, depth=24, seed=11)
    cold_onnx = dense_model(401, inputs=64, outputs=8)
    hot = ray_stack.add_model("ray-hot", hot_onnx, grant=[user])
    cold = ray_stack.add_model("ray-sporadic", cold_onnx, grant=[user])
    square = {"X": np.random.default_rng(5).standard_normal((256, 256)).astype(np.float32)}
    _infer_all(ray_stack, [(user, hot, square)])  # loaded somewhere: the burst below is warm
    jobs = [(user, hot, square)] * 4 + [(user, cold, x(64, 1))]
    results = _infer_all(ray_stack, jobs)
    hot_instances = {r.instance_id for m, r, _ in results if m == hot}
    cold_instances = {r.instance_id for m, r, _ in results if m == cold}
    assert len(hot_instances) == 1, hot_instances
    assert cold_instances.isdisjoint(hot_instances)
    for model, result, outputs in results:
        reference = plain_run(
            hot_onnx if model == hot else cold_onnx, square if model == hot else x(64, 1)
        )
        np.testing.assert_allclose(outputs["Y"], reference["Y"], rtol=1e-4, atol=1e-4)
        decision = result.decision
        assert decision is not None
        assert decision.kind == "run"
        assert decision.instance_id == result.instance_id  # where FnPacker sent it, it ran
        assert ray_stack.platform.packer.replica_for(result.instance_id) is not None
    stats = ray_stack.platform.stats()
    assert stats.policy == "sesemi"
    assert len(stats.instances) == 2
    assert stats.counters["served"] >= 6


def test_an_ungranted_user_is_denied(ray_stack: RayStack) -> None:
    granted, stranger = ray_stack.new_user(), ray_stack.new_user()
    model = ray_stack.add_model("ray-acl", dense_model(77), grant=[granted])
    key = RequestKey.generate()  # the stranger registers a request key; nobody granted it
    stranger.put_request_key(model, key, ray_stack.stack.runtime_policy)
    ray_stack.keys[(stranger.principal_id, model)] = key
    with pytest.raises(AccessDenied) as info:
        _infer_all(ray_stack, [(stranger, model, x(64, 0))])
    assert str(info.value) == "access denied"
    assert not info.value.retryable
    ((_, result, outputs),) = _infer_all(ray_stack, [(granted, model, x(64, 0))])
    np.testing.assert_allclose(
        outputs["Y"], plain_run(dense_model(77), x(64, 0))["Y"], rtol=1e-5, atol=1e-5
    )
    assert result.decision is not None
