"""A real instance (``sealserve instance serve``): sealed inference, concurrency, the OpenWhisk
contract, errors, a damaged store, a runtime killed mid-request."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sealserve.bench._runtime_stack import LocalStack, infer_tensors
from sealserve.crypto import RequestKey
from sealserve.ecall import timings
from sealserve.errors import InvalidEnvelope, ModelNotAvailable, RuntimeUnavailable
from sealserve.instance import ACTIVATION_MARKER, InstanceClient
from sealserve.models import get_spec, topk
from sealserve.protocol import new_request_id, seal_input, unseal_output
from tests.unit.runtime.graphs import dense_model, plain_run, slow_model


def x(n: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"X": np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)}


def test_sealed_inference_equals_plain_onnxruntime(stack: LocalStack, mobilenet: Path) -> None:
    model = stack.add_model("mobilenet", mobilenet)
    assert stack.user is not None
    inputs = get_spec("mobilenet-v2").example_inputs(3)
    with stack.start_instance() as instance:
        outputs, stages = infer_tensors(
            instance.client,
            model.request_key,
            inputs,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )
        expected = plain_run(mobilenet.read_bytes(), inputs)["logits"]
        assert np.allclose(outputs["logits"], expected, rtol=1e-6, atol=1e-6)
        assert topk(outputs["logits"], 5) == topk(expected, 5)
        for stage in timings.COLD_START_STAGES:
            assert stages[stage] >= 0, stage
        _, warm = infer_tensors(
            instance.client,
            model.request_key,
            inputs,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )
        assert timings.MODEL_FETCH not in warm
        assert warm[timings.TOTAL] >= warm[timings.RUNTIME] >= warm[timings.INFERENCE]


def test_sixteen_concurrent_requests_over_three_models_under_a_small_budget(
    stack: LocalStack,
) -> None:
    onnx = [dense_model(40 + i, inputs=512, outputs=512) for i in range(3)]  # 1 MiB each
    models = [stack.add_model(f"dense-{i}", o) for i, o in enumerate(onnx)]
    assert stack.user is not None
    user = stack.user.principal_id
    # ~4.2 MiB charged per model (factor 4), 10 MiB of budget: two fit, the third evicts one.
    with stack.start_instance(memory_budget_mb=10, concurrency=16) as instance:

        def one(i: int) -> tuple[int, np.ndarray[Any, Any]]:
            m = models[i % 3]
            with InstanceClient(instance.url) as client:
                outputs, _ = infer_tensors(
                    client, m.request_key, x(512, i), model_id=m.model_id, user_id=user
                )
            return i, outputs["Y"]

        for _ in range(2):
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                results = list(pool.map(one, range(16)))
            for i, y in results:
                expected = plain_run(onnx[i % 3], x(512, i))["Y"]
                assert np.allclose(y, expected, rtol=1e-4, atol=1e-4)
        stats = instance.client.stats()["runtime"]["models"]
        assert stats["used_bytes"] <= stats["budget_bytes"] == 10 << 20
        assert stats["evictions"] >= 1
        assert len(stats["models"]) <= 2


def test_tampered_inputs_and_wrong_keys_get_the_fixed_error_and_serving_goes_on(
    stack: LocalStack,
) -> None:
    onnx = dense_model(50)
    model = stack.add_model("dense-t", onnx)
    assert stack.user is not None
    user = stack.user.principal_id
    with stack.start_instance() as instance:
        client = instance.client
        rid = new_request_id()
        good = seal_input(model.request_key, x(64, 1), model_id=model.model_id, user_id=user,
                          request_id=rid)  # fmt: skip
        tampered = bytearray(good)
        tampered[30] ^= 0x80
        wrong = seal_input(RequestKey.generate(), x(64, 1), model_id=model.model_id,
                           user_id=user, request_id=rid)  # fmt: skip
        for bad in (bytes(tampered), wrong, good[:20]):
            with pytest.raises(InvalidEnvelope) as info:
                client.infer(model_id=model.model_id, user_id=user, request_id=rid,
                             sealed_input=bad)  # fmt: skip
            assert str(info.value) == "invalid envelope"
        result = client.infer(
            model_id=model.model_id, user_id=user, request_id=rid, sealed_input=good
        )
        opened = unseal_output(
            model.request_key, result.sealed_output, model_id=model.model_id, user_id=user,
            request_id=rid,
        )  # fmt: skip
        assert np.allclose(opened["Y"], plain_run(onnx, x(64, 1))["Y"], rtol=1e-5, atol=1e-5)


def test_the_openwhisk_action_contract(stack: LocalStack) -> None:
    model = stack.add_model("dense-ow", dense_model(51))
    assert stack.user is not None
    user = stack.user.principal_id
    with (
        stack.start_instance() as instance,
        httpx.Client(base_url=instance.url, timeout=60) as http,
    ):
        assert (
            http.post("/init", json={"value": {"name": "sealed", "main": "main"}}).status_code
            == 200
        )
        second = http.post("/init", json={"value": {}})
        assert second.status_code == 403
        assert second.json()["error"]["code"] == "already_initialized"

        def run(i: int) -> httpx.Response:
            rid = f"ow-{i}"
            deadline_ms = time.time() * 1000 + 60_000  # OpenWhisk sends numbers or strings
            sealed = seal_input(model.request_key, x(64, i), model_id=model.model_id,
                                user_id=user, request_id=rid)  # fmt: skip
            body = {
                "value": {"model_id": model.model_id, "user_id": user, "request_id": rid,
                          "input": base64.b64encode(sealed).decode()},
                "activation_id": f"act{i}",
                "deadline": str(int(deadline_ms)) if i % 2 else deadline_ms,
                "action_name": "/guest/sealed",
                "namespace": "guest",
            }  # fmt: skip
            return http.post("/run", json=body)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(run, range(4)))
        for i, response in enumerate(answers):
            assert response.status_code == 200, response.text
            doc = response.json()
            assert doc["activation_id"] == f"act{i}"
            unseal_output(model.request_key, base64.b64decode(doc["output"]),
                          model_id=model.model_id, user_id=user, request_id=f"ow-{i}")  # fmt: skip
        failed = http.post("/run", json={"value": {"model_id": model.model_id}})
        assert failed.status_code == 400
        assert set(failed.json()) == {"error"}
        logs = instance.logs()
    assert logs.count(ACTIVATION_MARKER) == 2 * 5  # stdout and stderr, five activations


def test_a_damaged_blob_is_not_served_and_other_models_still_are(stack: LocalStack) -> None:
    good = stack.add_model("dense-g", dense_model(52))
    bad = stack.add_model("dense-b", dense_model(53))
    assert stack.user is not None
    user = stack.user.principal_id
    manifest = stack.store.get(bad.model_id)
    blob = stack.store.root / "blobs" / "sha256" / manifest.digest
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-100] ^= 1
    blob.write_bytes(data)
    with stack.start_instance() as instance:
        with pytest.raises(ModelNotAvailable, match="does not match its digest"):
            infer_tensors(instance.client, bad.request_key, x(64, 0), model_id=bad.model_id,
                                          user_id=user)  # fmt: skip
        outputs, _ = infer_tensors(
            instance.client, good.request_key, x(64, 0), model_id=good.model_id, user_id=user
        )
        assert outputs["Y"].shape == (1, 16)


def test_a_runtime_killed_mid_request_fails_it_retryably_and_the_next_succeeds(
    stack: LocalStack,
) -> None:
    onnx = slow_model()
    model = stack.add_model("slow", onnx)
    assert stack.user is not None
    user = stack.user.principal_id
    inputs = {"X": np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)}
    with stack.start_instance(concurrency=4) as instance:
        infer_tensors(instance.client, model.request_key, inputs, model_id=model.model_id,
                                      user_id=user)  # fmt: skip  # warm
        first_pid = instance.client.stats()["supervisor"]["runtime_pid"]

        def one(_: int) -> Exception | None:
            with InstanceClient(instance.url) as client:
                try:
                    infer_tensors(client, model.request_key, inputs, model_id=model.model_id,
                                         user_id=user)  # fmt: skip
                except Exception as exc:
                    return exc
            return None

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(one, i) for i in range(3)]
            deadline = time.monotonic() + 30
            while instance.client.stats()["instance"]["in_flight"] < 3:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            os.kill(first_pid, signal.SIGKILL)
            outcomes = [f.result(60) for f in futures]
        failures = [o for o in outcomes if o is not None]
        assert failures, "the kill landed after every request had finished"
        for failure in failures:
            assert isinstance(failure, RuntimeUnavailable)
            assert failure.retryable
        outputs, stages = infer_tensors(
            instance.client, model.request_key, inputs, model_id=model.model_id, user_id=user
        )
        assert np.allclose(outputs["Y"], plain_run(onnx, inputs)["Y"], rtol=1e-3, atol=1e-3)
        assert timings.RUNTIME_START in stages  # this request carried the restart's cold start
        supervisor = instance.client.stats()["supervisor"]
        assert supervisor["restarts"] == 1
        assert supervisor["runtime_pid"] != first_pid
        assert supervisor["state"] == "ready"
