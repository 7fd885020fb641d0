"""The real runtime process, launched through the simulated platform by a supervisor in this
process: ecalls and ocalls over real shared memory, restarts, orderly stops, bad launches."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from sealserve.bench._runtime_stack import LocalStack
from sealserve.ecall import timings, wire
from sealserve.errors import ModelNotAvailable, RuntimeUnavailable
from sealserve.instance import RuntimeStatus, RuntimeSupervisor, SupervisorOptions
from sealserve.protocol import new_request_id, seal_input, unseal_output
from tests.unit.runtime.graphs import dense_model, plain_run

Op = wire.Op


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def supervisor(stack: LocalStack, **options: Any) -> RuntimeSupervisor:
    assert stack.platform is not None
    return RuntimeSupervisor(
        launcher=stack.platform,
        launch_config=options.pop("launch_config", stack.runtime_config),
        store=stack.store,
        keyservice_url=stack.keyservice_url,
        options=SupervisorOptions(start_timeout_s=30, **options),
    )


def infer(sup: RuntimeSupervisor, stack: LocalStack, model: Any, seed: int) -> np.ndarray[Any, Any]:
    assert stack.user is not None
    user = stack.user.principal_id
    rid = new_request_id()
    inputs = {"X": np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)}
    sealed = seal_input(model.request_key, inputs, model_id=model.model_id, user_id=user,
                        request_id=rid)  # fmt: skip
    meta = {"model_id": model.model_id, "user_id": user, "request_id": rid, "timeout_s": 30}
    with sup.call(Op.INFER, meta, sealed, timeout=30) as reply:
        assert set(reply.meta["timings"]) >= {timings.INFERENCE, timings.RUNTIME}
        out = unseal_output(model.request_key, bytes(reply.payload), model_id=model.model_id,
                            user_id=user, request_id=rid)  # fmt: skip
    return out["Y"]


def test_ecalls_and_ocalls_over_shared_memory(stack: LocalStack) -> None:
    onnx = dense_model(70)
    model = stack.add_model("dense", onnx)
    assert stack.user is not None
    with supervisor(stack) as sup:
        assert sup.status is RuntimeStatus.READY
        with sup.call(Op.LOAD, {"model_id": model.model_id, "user_id": stack.user.principal_id,
                                "timeout_s": 30}, timeout=30) as reply:  # fmt: skip
            loaded = reply.meta["timings"]
        assert loaded[timings.MODEL_FETCH] > 0
        assert loaded[timings.ATTESTATION_KEY_RELEASE] > 0
        expected = plain_run(
            onnx, {"X": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}
        )
        assert np.allclose(infer(sup, stack, model, 1), expected["Y"], rtol=1e-5, atol=1e-5)
        with sup.call(Op.STATS, {}, timeout=10) as reply:
            stats = reply.meta
        assert stats["models"]["loads"] == 1
        assert stats["keys"]["releases"] == 1
        assert stats["pid"] == sup.describe()["runtime_pid"]
        with sup.call(Op.EVICT, {"model_id": model.model_id}, timeout=10) as reply:
            assert reply.meta == {"evicted": True}
        process = sup.current(timeout=1).process
    assert process.wait(10) == 0  # an orderly close: the runtime left with status 0


def test_a_crashed_runtime_is_restarted(stack: LocalStack) -> None:
    model = stack.add_model("dense-r", dense_model(71))
    with supervisor(stack) as sup:
        infer(sup, stack, model, 0)
        first = sup.current(timeout=1)
        os.kill(first.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while sup.describe()["generation"] == 1:  # until the supervisor notices the death
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = sup.current(timeout=30)  # waits for the restart to finish
        assert second.number == 2
        assert second.process.pid != first.process.pid
        infer(sup, stack, model, 1)
        assert sup.restarts == 1
        assert "status" in sup.describe()["last_error"] or "lost" in sup.describe()["last_error"]


def test_restarts_are_bounded(stack: LocalStack) -> None:
    model = stack.add_model("dense-b", dense_model(72))
    with supervisor(stack, max_restarts=1, restart_window_s=300, restart_backoff_s=0.01) as sup:
        infer(sup, stack, model, 0)
        for _ in range(2):
            pid = sup.current(timeout=30).process.pid
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while sup.status is RuntimeStatus.READY and sup.describe()["runtime_pid"] == pid:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        deadline = time.monotonic() + 30
        while sup.status is not RuntimeStatus.FAILED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(RuntimeUnavailable, match="failed"):
            sup.current(timeout=1)


def test_a_runtime_without_its_keyservice_pin_refuses_to_start(stack: LocalStack) -> None:
    sup = supervisor(stack, launch_config={})
    with pytest.raises(RuntimeUnavailable, match="did not connect"):
        sup.start()
    assert sup.status is RuntimeStatus.FAILED
    sup.close()


def test_a_model_larger_than_the_channel_is_not_available_and_serving_goes_on(
    stack: LocalStack,
) -> None:
    big = stack.add_model("big", dense_model(73, inputs=1024, outputs=1024))  # 4 MiB
    small = stack.add_model("small", dense_model(74))
    assert stack.user is not None
    user = stack.user.principal_id
    with supervisor(stack, request_arena_bytes=2 << 20) as sup:
        meta = {"model_id": big.model_id, "user_id": user, "timeout_s": 30}
        with pytest.raises(ModelNotAvailable, match="request_arena_bytes"):
            sup.call(Op.LOAD, meta, timeout=30)
        infer(sup, stack, small, 0)
