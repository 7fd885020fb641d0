"""A loaded model refuses, before running, what its owner's declared input limits exclude."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sealserve.client import declare_input_limits
from sealserve.errors import ModelNotAvailable
from sealserve.runtime import BAD_INPUT, OVER_LIMITS, LoadedModel, PlaintextBuffer


def add_model() -> bytes:
    """``Z = rowsum(X) + F``: ``X`` is ``[batch, seq]`` (both dynamic), ``F`` ``[batch, 4]``."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["X", "axes"], ["S"], keepdims=1),
            helper.make_node("Add", ["S", "F"], ["Z"]),
        ],
        "add",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("F", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array([1], np.int64), name="axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def load(model: bytes) -> LoadedModel:
    plaintext = PlaintextBuffer(len(model))
    plaintext.view[:] = model
    return LoadedModel.build(plaintext, model_id="o/m", version=1, threads=1, charged_bytes=1)


def inputs(batch: int, seq: int, width: int = 4) -> dict[str, np.ndarray]:
    return {
        "X": np.ones((batch, seq), np.float32),
        "F": np.zeros((batch, width), np.float32),
    }


def test_a_request_over_the_declared_limits_is_refused_before_it_runs() -> None:
    model = load(declare_input_limits(add_model(), max_batch=4, max_dims={"X": [None, 16]}))
    out = model.run(inputs(4, 16))
    np.testing.assert_array_equal(out["Z"], np.full((4, 4), 16, np.float32))
    for batch, seq in ((5, 1), (1, 17), (10_000, 10_000)):
        with pytest.raises(ValueError, match=f"^{OVER_LIMITS}$"):
            model.run(inputs(batch, seq))
    with pytest.raises(ValueError, match=f"^{BAD_INPUT}$"):  # a static size stays BAD_INPUT
        model.run(inputs(1, 1, width=5))


def test_without_a_declaration_only_the_static_shapes_bound_a_request() -> None:
    model = load(add_model())
    assert model.run(inputs(64, 64))["Z"].shape == (64, 4)
    with pytest.raises(ValueError, match=f"^{BAD_INPUT}$"):
        model.run(inputs(1, 1, width=3))


@pytest.mark.parametrize(
    "props",
    [
        {"sealserve.max_batch": "zero"},
        {"sealserve.max_dims": '{"X": [1]}'},
        {"sealserve.max_dims": '{"F": [null, 5]}'},
        {"sealserve.max_dims": "[" * 70_000},
        {"sealserve.max_seq": "1"},
    ],
)
def test_a_malformed_declaration_fails_the_load_with_one_fixed_error(
    props: dict[str, str],
) -> None:
    proto = onnx.load_from_string(add_model())
    helper.set_model_props(proto, props)
    with pytest.raises(ModelNotAvailable) as caught:
        load(proto.SerializeToString())
    assert str(caught.value) == "model 'o/m' does not load: its declared input limits are malformed"


def test_the_sdk_refuses_a_declaration_that_does_not_fit_the_model() -> None:
    with pytest.raises(ValueError, match="dimension 1 of input 'F' is static"):
        declare_input_limits(add_model(), max_dims={"F": [None, 5]})
    with pytest.raises(ValueError, match="'Q', which is not an input of the model"):
        declare_input_limits(add_model(), max_dims={"Q": [1]})
    with pytest.raises(ValueError, match="max_batch must be an int from 1"):
        declare_input_limits(add_model(), max_batch=0)
    # Declaring again replaces the earlier declaration and keeps the owner's other props.
    proto = onnx.load_from_string(add_model())
    props = {"author": "me", "sealserve.model": "add", "sealserve.max_batch": "2"}
    helper.set_model_props(proto, props)
    again = onnx.load_from_string(declare_input_limits(proto.SerializeToString(), max_batch=9))
    assert {p.key: p.value for p in again.metadata_props} == {
        "author": "me",
        "sealserve.model": "add",
        "sealserve.max_batch": "9",
    }


def test_a_zoo_model_loads_with_its_own_sealserve_metadata(tmp_path: Path) -> None:
    from sealserve.models import build

    path = build("mobilenet-v2", tmp_path)
    proto = onnx.load(str(path))
    assert any(p.key.startswith("sealserve.") for p in proto.metadata_props)
    model = load(path.read_bytes())
    assert model.run({"input": np.zeros((1, 3, 224, 224), np.float32)})
