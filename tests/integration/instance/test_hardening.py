"""Issue 10.7 against a real instance: what the host can read of the runtime.

* onnxruntime's error text (node names, shapes) never reaches the host-readable instance log;
  the request that caused it is refused as a bad input.
* The runtime is not dumpable and its core limit is 0, soft and hard.
* The host's control calls (load, evict) need the token only its launcher was given.
* Slow request bodies give the host's request slots back (issue 10.3).
* One request cannot take the runtime's memory (issue 10.5).
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sealserve.bench._runtime_stack import LocalStack, infer_tensors
from sealserve.client import declare_input_limits
from sealserve.errors import InstanceError, MemoryBudgetExceeded
from sealserve.instance import InstanceClient
from sealserve.runtime import BAD_INPUT, OVER_LIMITS
from tests.unit.runtime.graphs import dense_model

pytestmark = pytest.mark.integration

_NODE = "ReshapeNodeNamedInTheModel"


def reshape_model() -> bytes:
    """``Y = reshape(X, [3, -1])``: any batch whose size is not a multiple of 3 fails inside
    onnxruntime's kernel, whose error names the node and both shapes."""
    shape = numpy_helper.from_array(np.array([3, -1], np.int64), name="target_shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "target_shape"], ["Y"], name=_NODE)],
        "reshape",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, "m"])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_onnxruntime_error_text_stays_inside_the_runtime(stack: LocalStack) -> None:
    assert stack.user is not None
    model = stack.add_model("reshape", reshape_model())
    user = stack.user.principal_id
    with stack.start_instance(extra=["--log-level", "DEBUG"]) as instance:
        good = {"X": np.ones((3, 4), np.float32)}
        outputs, _ = infer_tensors(
            instance.client, model.request_key, good, model_id=model.model_id, user_id=user
        )
        assert outputs["Y"].shape == (3, 4)
        bad = {"X": np.ones((1, 4), np.float32)}  # 4 values do not reshape to [3, -1]
        with pytest.raises(ValueError, match=BAD_INPUT):
            infer_tensors(
                instance.client, model.request_key, bad, model_id=model.model_id, user_id=user
            )
        logs = instance.logs()
    # The positive control: the runtime did log the failure, by its type only.
    assert "model.run_failed" in logs
    for leak in (_NODE, "Reshape", "target_shape", "{1,4}", "onnxruntime::", "ExecuteKernel"):
        assert leak not in logs, f"the host-readable log holds {leak!r}"


def test_the_runtime_is_not_dumpable_and_dumps_no_core(stack: LocalStack) -> None:
    with stack.start_instance() as instance:
        protection = instance.client.stats()["runtime"]["protection"]
        assert protection == {"dumpable": False, "core_limit": [0, 0]}
        # From outside: the kernel's view of the runtime process.
        limits = Path(f"/proc/{instance.runtime_pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core


def test_another_local_process_cannot_load_or_evict(stack: LocalStack) -> None:
    assert stack.user is not None
    model = stack.add_model("control", dense_model(61))
    user = stack.user.principal_id
    with stack.start_instance(name="control") as instance:
        # Only the launcher reads the token: the ready file is the launcher's alone.
        ready_file = stack.root / "control.ready"
        assert stat.S_IMODE(ready_file.stat().st_mode) == 0o600
        instance.client.load(model_id=model.model_id, user_id=user)
        with InstanceClient(instance.url) as stranger:
            for call in (
                lambda: stranger.evict(model.model_id),
                lambda: stranger.load(model_id=model.model_id, user_id=user),
            ):
                with pytest.raises(InstanceError, match="unauthorized"):
                    call()
        assert instance.client.evict(model.model_id) is True  # still resident until now


def test_stalled_request_bodies_give_their_slots_back(stack: LocalStack) -> None:
    """Slowloris on the instance host (issue 10.3): requests that stall mid-body hold the
    host's request slots (``--concurrency``) until they are cut off (408) after
    ``--body-timeout-s``; then real requests are served again."""
    assert stack.user is not None
    model = stack.add_model("slots", dense_model(62))
    user = stack.user.principal_id
    extra = ["--body-timeout-s", "0.5"]
    with stack.start_instance(name="slots", concurrency=2, extra=extra) as instance:
        address = (instance.ready["host"], int(instance.ready["port"]))
        stalled = []
        for i in range(2):
            sock = socket.create_connection(address, timeout=60)
            sock.sendall(
                (
                    f"POST /v1/infer HTTP/1.1\r\nhost: i\r\ncontent-length: {64 << 20}\r\n"
                    f"x-sealserve-model: {model.model_id}\r\nx-sealserve-user: {user}\r\n"
                    f"x-sealserve-request-id: stall-{i}\r\n\r\n"
                ).encode()
                + b"x" * 10
            )
            stalled.append(sock)
        for sock in stalled:
            out = bytearray()
            while chunk := sock.recv(65536):
                out += chunk
            assert out.startswith(b"HTTP/1.1 408 "), bytes(out[:80])
            sock.close()
        outputs, _ = infer_tensors(
            instance.client,
            model.request_key,
            {"X": np.ones((1, 64), np.float32)},
            model_id=model.model_id,
            user_id=user,
        )
        assert outputs["Y"].shape == (1, 16)
        logs = instance.logs()
    assert "http.body_timeout" in logs
    assert "Traceback" not in logs


def gram_model() -> bytes:
    """``Y = rowsum(X X^T)``: a tiny input and a tiny output, but an ``n x n`` intermediate
    (n = 8,000 rows of 64 floats, 2 MB in, needs 256 MB): one tenant's request that takes the
    runtime's memory, as the MiniLM batch of issue 10.5 did."""
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["X"], ["T"], perm=[1, 0]),
            helper.make_node("MatMul", ["X", "T"], ["M"]),
            helper.make_node("ReduceSum", ["M", "axes"], ["Y"], keepdims=0),
        ],
        "gram",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array([1], np.int64), name="axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_one_request_cannot_take_the_runtimes_memory(stack: LocalStack) -> None:
    assert stack.user is not None
    model = stack.add_model("gram", gram_model())
    user = stack.user.principal_id

    def rows(n: int) -> dict[str, np.ndarray]:
        return {"X": np.full((n, 64), 0.01, np.float32)}

    def run(n: int) -> np.ndarray:
        outputs, _ = infer_tensors(
            instance.client, model.request_key, rows(n), model_id=model.model_id, user_id=user
        )
        return outputs["Y"]

    mib = 1 << 20
    extra = ["--inference-memory-mb", "400"]
    with stack.start_instance(name="gram", extra=extra) as instance:
        assert run(100).shape == (100,)
        before = instance.client.stats()["runtime"]["rss_bytes"]
        # 12,000 rows need 576 MB at once: refused, and the runtime did not grow by it.
        with pytest.raises(MemoryBudgetExceeded):
            run(12_000)
        after_refused = instance.client.stats()["runtime"]["rss_bytes"]
        assert after_refused - before < 400 * mib
        # 8,000 rows (256 MB) fit; once answered, the memory is given back (up to the heap
        # the runtime keeps for its buffers, 128 MiB).
        np.testing.assert_allclose(run(8_000)[:3], [8_000 * 64 * 1e-4] * 3, rtol=1e-3)
        after_large = instance.client.stats()["runtime"]["rss_bytes"]
        assert after_large - before < 160 * mib, (before, after_large)
        assert run(100).shape == (100,)  # and it serves on


def test_a_batch_over_the_owners_declared_limit_is_refused_before_it_runs(
    stack: LocalStack,
) -> None:
    """The attack of issue 10.5 in small: a batch the model's owner did not declare is refused
    with 400 before onnxruntime allocates for it, with no memory cap configured."""
    assert stack.user is not None
    declared = declare_input_limits(gram_model(), max_batch=1_000)
    model = stack.add_model("gram-declared", declared)
    user = stack.user.principal_id

    def run(n: int) -> np.ndarray:
        rows = {"X": np.full((n, 64), 0.01, np.float32)}
        outputs, _ = infer_tensors(
            instance.client, model.request_key, rows, model_id=model.model_id, user_id=user
        )
        return outputs["Y"]

    mib = 1 << 20
    with stack.start_instance(name="gram-declared") as instance:
        assert run(1_000).shape == (1_000,)  # within the limit: served
        before = instance.client.stats()["runtime"]["rss_bytes"]
        # 12,000 rows (3 MB in) would need 576 MB at once: refused before running.
        with pytest.raises(ValueError, match=f"^bad_request: {OVER_LIMITS}$"):
            run(12_000)
        after = instance.client.stats()["runtime"]["rss_bytes"]
        assert after - before < 64 * mib, (before, after)
        assert run(10).shape == (10,)  # and it serves on
