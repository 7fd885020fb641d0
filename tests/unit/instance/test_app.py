"""The host's HTTP surface over a runtime in this process (ASGI transport, no network)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from sealserve.ecall import timings
from sealserve.instance import ACTIVATION_MARKER, HostOptions, InstanceHost
from sealserve.protocol import headers, seal_input, unseal_output
from tests.unit.instance.fakes import InProcessRuntime
from tests.unit.runtime.graphs import dense_model, plain_run
from tests.unit.runtime.keyservice import InProcessKeyService

Test = Callable[["Harness"], Awaitable[None]]


class Harness:
    def __init__(self, ks: InProcessKeyService, host: InstanceHost, client: httpx.AsyncClient):
        self.ks = ks
        self.host = host
        self.client = client
        self.onnx = dense_model(1)
        self.model_id, self.key = ks.add_model("dense", self.onnx)
        self.user = ks.user.principal_id

    def inputs(self, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
        return {"X": np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)}

    def sealed(self, request_id: str, seed: int = 0, model_id: str | None = None) -> bytes:
        return seal_input(
            self.key,
            self.inputs(seed),
            model_id=model_id or self.model_id,
            user_id=self.user,
            request_id=request_id,
            clock=self.ks.clock,
        )

    def infer_headers(self, request_id: str, **extra: str) -> dict[str, str]:
        return {
            headers.MODEL_HEADER: self.model_id,
            headers.USER_HEADER: self.user,
            headers.REQUEST_ID_HEADER: request_id,
            **extra,
        }

    async def infer(self, request_id: str, **extra: str) -> httpx.Response:
        return await self.client.post(
            "/v1/infer",
            content=self.sealed(request_id),
            headers=self.infer_headers(request_id, **extra),
        )


@pytest.fixture
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path_factory.mktemp("ks"))
    try:
        yield harness
    finally:
        harness.close()


def run(ks: InProcessKeyService, test: Test, **options: Any) -> None:
    runtime = InProcessRuntime(ks, workers=options.pop("workers", 4))
    host = InstanceHost(
        runtime,
        options=HostOptions(**options),
        clock=ks.clock,
        sandbox_start_s=0.5,
    )
    host.runtime_started(runtime.generation)

    async def main() -> None:
        transport = httpx.ASGITransport(app=host.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://instance") as client:
            await test(Harness(ks, host, client))

    try:
        asyncio.run(main())
    finally:
        runtime.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    doc = response.json()
    assert set(doc) == {"error"}
    error: dict[str, Any] = doc["error"]
    assert set(error) == {"code", "message", "retryable"}
    return error


def test_infer_returns_the_sealed_output_and_its_stage_timings(ks: InProcessKeyService) -> None:
    async def body(h: Harness) -> None:
        first = await h.infer("r-1")
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "application/octet-stream"
        assert first.headers[headers.REQUEST_ID_HEADER] == "r-1"
        outputs = unseal_output(
            h.key, first.content, model_id=h.model_id, user_id=h.user, request_id="r-1"
        )
        assert np.allclose(outputs["Y"], plain_run(h.onnx, h.inputs())["Y"], rtol=1e-5, atol=1e-5)
        cold = headers.parse_server_timing(first.headers[headers.SERVER_TIMING_HEADER])
        for stage in timings.COLD_START_STAGES:
            assert stage in cold, stage
        assert cold[timings.SANDBOX_START] == 500.0
        second = await h.infer("r-2")
        warm = headers.parse_server_timing(second.headers[headers.SERVER_TIMING_HEADER])
        assert timings.RUNTIME_START not in warm
        assert set(warm) >= {timings.INPUT_UNSEAL, timings.INFERENCE, timings.TOTAL}
        stats = (await h.client.get("/v1/stats")).json()
        assert stats["cold_start"][timings.MODEL_FETCH] == cold[timings.MODEL_FETCH]
        assert stats["runtime"]["models"]["loads"] == 1
        assert stats["instance"]["served"] == 2

    run(ks, body)


def test_bad_requests_get_a_stable_code_and_no_secret(ks: InProcessKeyService) -> None:
    async def body(h: Harness) -> None:
        async def post(content: Any, hdrs: dict[str, str]) -> dict[str, Any]:
            response = await h.client.post("/v1/infer", content=content, headers=hdrs)
            return {"status": response.status_code, **error_of(response)}

        base = h.infer_headers("r-1")
        missing = {k: v for k, v in base.items() if k != headers.MODEL_HEADER}
        assert (await post(b"x", missing))["code"] == "bad_request"
        bad_user = {**base, headers.USER_HEADER: "nobody"}
        assert (await post(b"x", bad_user))["code"] == "bad_request"
        bad_id = {**base, headers.REQUEST_ID_HEADER: "no spaces"}
        assert (await post(b"x", bad_id))["code"] == "bad_request"

        async def chunks() -> AsyncIterator[bytes]:
            yield b"abc"

        assert (await post(chunks(), base)) == {
            "status": 411, "code": "length_required",
            "message": "send the sealed input with a Content-Length", "retryable": False,
        }  # fmt: skip
        too_big = await post(b"x" * (h.host.options.max_body_bytes + 1), base)
        assert (too_big["status"], too_big["code"]) == (413, "payload_too_large")
        tampered = bytearray(h.sealed("r-1"))
        tampered[-5] ^= 1
        invalid = await post(bytes(tampered), base)
        assert invalid == {
            "status": 400, "code": "invalid_envelope", "message": "invalid envelope",
            "retryable": False,
        }  # fmt: skip
        late = await h.client.post(
            "/v1/infer",
            content=h.sealed("r-1"),
            headers={**base, headers.DEADLINE_HEADER: str(int(h.ks.clock.time() * 1000) - 1)},
        )
        assert late.status_code == 503
        assert late.headers["retry-after"] == "1"
        assert error_of(late)["code"] == "deadline_exceeded"
        assert error_of(late)["retryable"] is True
        unknown = await h.client.post(
            "/v1/infer",
            content=h.sealed("r-1", model_id=h.ks.owner.model_id("nope")),
            headers={**base, headers.MODEL_HEADER: h.ks.owner.model_id("nope")},
        )
        assert unknown.status_code in (403, 404)  # no grant for a model that does not exist
        ok = await h.infer("r-2")  # and the runtime keeps serving
        assert ok.status_code == 200

    run(ks, body)


def test_an_instance_at_its_concurrency_answers_overloaded(ks: InProcessKeyService) -> None:
    async def body(h: Harness) -> None:
        gate = h.ks.source.gate = __import__("threading").Event()
        first = asyncio.create_task(h.infer("r-1"))
        while h.host._in_flight < 1:
            await asyncio.sleep(0.001)
        second = await h.infer("r-2")
        assert second.status_code == 503
        assert error_of(second) == {
            "code": "overloaded",
            "message": "the instance already serves 1 requests",
            "retryable": True,
        }
        gate.set()
        assert (await first).status_code == 200

    run(ks, body, concurrency=1)


def test_the_openwhisk_contract(ks: InProcessKeyService, capfd: pytest.CaptureFixture[str]) -> None:
    async def body(h: Harness) -> None:
        def activation(request_id: str, deadline: Any) -> dict[str, Any]:
            return {
                "value": {
                    "model_id": h.model_id,
                    "user_id": h.user,
                    "request_id": request_id,
                    "input": base64.b64encode(h.sealed(request_id)).decode(),
                },
                "activation_id": f"act-{request_id}",
                "deadline": deadline,
                "namespace": "guest",
                "action_name": "/guest/sealed",
                "api_key": "ignored",
                "transaction_id": "extra fields are tolerated",
            }

        early = await h.client.post("/run", json=activation("r-0", None))
        assert early.status_code == 409
        assert error_of(early)["code"] == "not_initialized"
        init = await h.client.post("/init", json={"value": {"name": "sealed", "main": "main"}})
        assert init.status_code == 200
        again = await h.client.post("/init", json={"value": {}})
        assert again.status_code == 403
        assert error_of(again)["code"] == "already_initialized"
        in_a_minute = h.ks.clock.time() * 1000 + 60_000
        runs = await asyncio.gather(
            h.client.post("/run", json=activation("r-1", in_a_minute)),
            h.client.post("/run", json=activation("r-2", str(int(in_a_minute)))),
            h.client.post("/run", json=activation("r-3", None)),
        )
        for i, response in enumerate(runs, 1):
            assert response.status_code == 200, response.text
            doc = response.json()
            assert doc["activation_id"] == f"act-r-{i}"
            assert doc["request_id"] == f"r-{i}"
            outputs = unseal_output(
                h.key, base64.b64decode(doc["output"]), model_id=h.model_id, user_id=h.user,
                request_id=f"r-{i}",
            )  # fmt: skip
            assert outputs["Y"].shape == (1, 16)
            assert doc["timings"][timings.INFERENCE] >= 0
        bad = await h.client.post("/run", json={**activation("r-4", None), "value": {"input": 1}})
        assert bad.status_code == 400
        assert set(bad.json()) == {"error"}

    run(ks, body)
    out, err = capfd.readouterr()
    # one marker per activation (five /run calls), on both streams
    assert out.count(ACTIVATION_MARKER + "\n") == 5
    assert err.count(ACTIVATION_MARKER + "\n") == 5


def test_load_evict_stats_health_and_metrics(ks: InProcessKeyService) -> None:
    async def body(h: Harness) -> None:
        auth = {"authorization": f"Bearer {h.host.control_token}"}
        doc = {"model_id": h.model_id, "user_id": h.user}
        load = await h.client.post("/v1/load", json=doc, headers=auth)
        assert load.status_code == 200, load.text
        assert timings.MODEL_UNSEAL_SESSION in load.json()["timings"]
        evict = await h.client.post("/v1/evict", json={"model_id": h.model_id}, headers=auth)
        assert evict.json() == {"model_id": h.model_id, "evicted": True}
        evict = await h.client.post("/v1/evict", json={"model_id": h.model_id}, headers=auth)
        assert evict.json()["evicted"] is False
        bad = await h.client.post("/v1/evict", content=b"[1]", headers=auth)
        assert error_of(bad)["code"] == "bad_request"
        health = await h.client.get("/healthz")
        assert health.json() == {"status": "ok", "runtime": "ready"}
        assert (await h.infer("r-1")).status_code == 200
        metrics = (await h.client.get("/metrics")).text
        assert 'sealserve_instance_requests_total{code="ok",endpoint="infer"} 1.0' in metrics
        assert "sealserve_runtime_models_resident 1.0" in metrics
        assert 'sealserve_instance_stage_seconds_count{stage="inference"} 1.0' in metrics
        assert "sealserve_instance_runtime_up 1.0" in metrics
        h.host.supervisor.fail()  # type: ignore[attr-defined]
        down = await h.client.get("/healthz")
        assert down.status_code == 503
        assert down.json()["status"] == "failed"
        refused = await h.infer("r-2")
        assert refused.status_code == 503
        assert error_of(refused)["code"] == "runtime_unavailable"
        stats = json.loads((await h.client.get("/v1/stats")).text)
        assert stats["runtime"] is None

    run(ks, body)


def test_the_open_inference_protocol_health_probes_follow_the_runtime(
    ks: InProcessKeyService,
) -> None:
    async def body(h: Harness) -> None:
        live = await h.client.get("/v2/health/live")
        ready = await h.client.get("/v2/health/ready")
        assert (live.status_code, live.json()) == (200, {"live": True})
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        runtime = h.host.supervisor
        assert isinstance(runtime, InProcessRuntime)
        runtime.fail()  # the supervisor gave up: the instance must be replaced
        live = await h.client.get("/v2/health/live")
        assert live.status_code == 503
        assert live.json() == {
            "live": False,
            "reason": "the runtime failed and will not be restarted: replace the instance",
        }
        ready = await h.client.get("/v2/health/ready")
        assert (ready.status_code, ready.json()["ready"]) == (503, False)
        assert ready.headers["retry-after"] == "1"

    run(ks, body)


def test_load_and_evict_need_the_control_token(ks: InProcessKeyService) -> None:
    """Any local user can reach an instance's port: without the token the host made (and
    gave only to its launcher) a load or an evict is refused before anything is read."""

    async def body(h: Harness) -> None:
        token = h.host.control_token
        assert len(token) >= 32
        auth = {"authorization": f"Bearer {token}"}
        load_doc = {"model_id": h.model_id, "user_id": h.user}
        assert (await h.client.post("/v1/load", json=load_doc, headers=auth)).status_code == 200
        wrong = (
            {},
            {"authorization": f"Bearer {token[:-1]}"},
            {"authorization": f"Bearer {token}x"},
            {"authorization": token},
            {"authorization": f"Basic {token}"},
        )
        for given in wrong:
            for path, doc in (("/v1/evict", {"model_id": h.model_id}), ("/v1/load", load_doc)):
                refused = await h.client.post(path, json=doc, headers=given)
                assert refused.status_code == 401, (path, given)
                assert error_of(refused)["code"] == "unauthorized"
        # The refused evicts evicted nothing: the model is still resident.
        evict = await h.client.post("/v1/evict", json={"model_id": h.model_id}, headers=auth)
        assert evict.json() == {"model_id": h.model_id, "evicted": True}

    run(ks, body)
