"""Small hand-built ONNX graphs for the runtime's tests, where the architecture does not matter.

* :func:`marker_model` — ``Y = X * 1`` (the input comes back bit for bit) and ``Z = X + W``,
  whose initializer ``W`` is a known byte run: the plaintext scans look for both.
* :func:`dense_model` — ``Y = X W + B``, of a chosen size (the memory budget tests).
* :func:`slow_model` — a chain of matrix products that takes a noticeable time (a runtime
  killed mid-request).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["dense_model", "marker_floats", "marker_model", "plain_run", "slow_model"]

_OPSET = [helper.make_opsetid("", 17)]


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=_OPSET, producer_name="sealserve-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def marker_floats(seed: int, n: int) -> npt.NDArray[np.float32]:
    """``n`` finite float32 values in [1, 2) whose bytes are a unique marker."""
    return np.random.default_rng(seed).uniform(1.0, 2.0, (1, n)).astype(np.float32)


def marker_model(weights: npt.NDArray[np.float32]) -> bytes:
    n = weights.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["X", "one"], ["Y"]),
            helper.make_node("Add", ["X", "W"], ["Z"]),
        ],
        "marker",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, n]),
        ],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.ones((1,), np.float32), "one"),
        ],
    )
    return _model(graph)


def dense_model(seed: int, *, inputs: int = 64, outputs: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((inputs, outputs)).astype(np.float32)
    b = rng.standard_normal((outputs,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "W", "B"], ["Y"])],
        f"dense-{seed}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, inputs])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, outputs])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _model(graph)


def slow_model(*, size: int = 512, depth: int = 64, seed: int = 7) -> bytes:
    """``depth`` chained ``size x size`` matrix products (a few hundred ms on 2 cores)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    nodes = []
    prev = "X"
    for i in range(depth):
        out = "Y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "W"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    return _model(graph)


def plain_run(
    model: bytes, inputs: dict[str, npt.NDArray[np.generic]]
) -> dict[str, npt.NDArray[np.generic]]:
    """What plain onnxruntime answers (the reference of every sealed result)."""
    import onnxruntime as ort

    from sealserve.runtime import session_options

    session = ort.InferenceSession(model, session_options(2), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs), strict=True))
