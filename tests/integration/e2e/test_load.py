"""Load: a bounded run of concurrent sealed requests with aiohttp's client against the gateway
on loopback.  Every request must succeed and unseal to the right answer; the figures are
printed (run with ``-s``), never asserted."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealserve.protocol import headers as hd
from sealserve.protocol import seal_input, unseal_output
from tests.integration.e2e.conftest import Stack
from tests.unit.runtime.graphs import dense_model, plain_run

pytestmark = pytest.mark.integration

REQUESTS = 240
CONCURRENCY = 8


def test_a_bounded_load_through_the_gateway_has_no_errors(stack: Stack, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    user = stack.new_user()
    onnx = dense_model(21, inputs=1024, outputs=64)
    model = stack.add_model("dense-load", onnx, tmp_path, grant=[user])
    key = stack.key(user, model)
    owner, name = model.split("/")
    url = f"{stack.gateway_url}/v1/models/{owner}/{name}:infer"
    rng = np.random.default_rng(5)
    inputs = [{"X": rng.standard_normal((1, 1024)).astype(np.float32)} for _ in range(REQUESTS)]
    sealed = [
        seal_input(key, x, model_id=model, user_id=user.principal_id, request_id=f"load-{i}")
        for i, x in enumerate(inputs)
    ]

    async def run() -> tuple[list[float], list[tuple[int, bytes]], float]:
        latencies: list[float] = []
        answers: list[tuple[int, bytes]] = [(0, b"")] * REQUESTS
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    headers = {
                        hd.USER_HEADER: user.principal_id,
                        hd.REQUEST_ID_HEADER: f"load-{i}",
                        "content-type": "application/octet-stream",
                    }
                    began = time.perf_counter()
                    async with session.post(url, data=sealed[i], headers=headers) as response:
                        body = await response.read()
                        answers[i] = (response.status, body)
                    latencies.append(time.perf_counter() - began)

            # Warm: one request brings the instance up and loads the model.
            await worker_once(session, url, user.principal_id, sealed[0])
            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            wall = time.perf_counter() - began
        return latencies, answers, wall

    latencies, answers, wall = asyncio.run(run())
    errors = [status for status, _ in answers if status != 200]
    assert errors == []
    for i in (0, REQUESTS // 2, REQUESTS - 1):
        out = unseal_output(key, answers[i][1], model_id=model, user_id=user.principal_id,
                            request_id=f"load-{i}")  # fmt: skip
        np.testing.assert_allclose(out["Y"], plain_run(onnx, inputs[i])["Y"], rtol=1e-4, atol=1e-4)
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)] * 1000
    print(
        f"\nload: {REQUESTS} requests, {CONCURRENCY} concurrent, {REQUESTS / wall:.0f} req/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {len(errors)}"
    )


async def worker_once(session: Any, url: str, user_id: str, body: bytes) -> None:
    headers = {hd.USER_HEADER: user_id, hd.REQUEST_ID_HEADER: "load-0"}
    async with session.post(url, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()
