"""Ray Serve under concurrency: 16, 64 and 256 requests at once through the gateway.

Three users, three models, two replicas of four slots each: most requests wait at FnPacker's
router.  A held request is answered with Ray Serve's back-off, never a busy loop (before that
fix, six requests at once hung the gateway: the router thread spun in ``choose_replicas``), so
every request is answered, unsealed and equal to plain onnxruntime's, and the router holds
nothing afterwards.

Each client thread has its own ``GatewayClient`` (one connection each): 256 threads sharing one
client's pool of 100 connections now and then read from a socket that httpx had closed under
them (EBADF), a client-side fault that has nothing to do with the gateway under test.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest

from sealserve.client import GatewayClient, User
from sealserve.gateway import Gateway, GatewayOptions, GatewayServer
from sealserve.instance import ModelStore
from sealserve.platform import ModelCatalog
from tests.integration.ray.conftest import RayStack
from tests.unit.runtime.graphs import dense_model, plain_run

pytestmark = pytest.mark.integration

_MODELS = 3
_USERS = 3


def x(n: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"X": np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)}


@pytest.fixture(scope="module")
def many(ray_stack: RayStack) -> tuple[list[User], list[str], list[bytes]]:
    users = [ray_stack.new_user() for _ in range(_USERS)]
    onnx = [dense_model(900 + i, inputs=64, outputs=8) for i in range(_MODELS)]
    models = [ray_stack.add_model(f"ray-many-{i}", o, grant=users) for i, o in enumerate(onnx)]
    return users, models, onnx


@pytest.mark.timeout(300)
@pytest.mark.parametrize("at_once", [16, 64, 256])
def test_concurrent_requests_through_the_ray_gateway_are_all_answered(
    ray_stack: RayStack, many: tuple[list[User], list[str], list[bytes]], at_once: int
) -> None:
    users, models, onnx = many
    catalog = ModelCatalog(ModelStore(ray_stack.options.store_dir))
    gateway = Gateway(ray_stack.platform, catalog, options=GatewayOptions(max_queued=at_once + 16))
    server = GatewayServer(gateway, host="127.0.0.1", port=0, log_level="WARNING")
    server.start()
    jobs = [(users[n % _USERS], n % _MODELS, n) for n in range(at_once)]

    def one(job: tuple[User, int, int]) -> tuple[int, int, Any]:
        user, i, seed = job
        with GatewayClient(server.url, timeout_s=240.0) as client:
            result = client.infer(
                models[i],
                x(64, seed),
                user_id=user.principal_id,
                key=ray_stack.keys[(user.principal_id, models[i])],
            )
        return i, seed, result

    try:
        with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
            results = list(pool.map(one, jobs))
    finally:
        server.stop()
    assert len(results) == at_once
    for i, seed, result in results:
        np.testing.assert_allclose(
            result.outputs["Y"], plain_run(onnx[i], x(64, seed))["Y"], rtol=1e-5, atol=1e-5
        )
        assert result.attempts == 1
        assert result.route is not None
        assert result.route.policy == "sesemi"
    stats = ray_stack.platform.stats()
    assert stats.waiting == 0
    assert stats.in_flight == 0
