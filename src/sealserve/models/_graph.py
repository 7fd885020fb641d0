"""Writing ONNX graphs with ``onnx.helper``, and streaming them to a file.

:class:`GraphBuilder` collects nodes, graph inputs and outputs, parameters (initializers,
declared by distribution, see :mod:`._weights`) and constants.  Constants (shapes, axes,
scalars) and buffers (BatchNorm's running statistics) are ``Constant`` nodes, never
initializers, so that the initializers are exactly the model's parameters and their element
count is its parameter count.

:meth:`GraphBuilder.write` streams the model: the protobuf framing of the graph and of every
initializer is computed from sizes known in advance, then each tensor is generated, written
and dropped.  Protobuf readers accept a message's fields in any order, so the initializers
follow the nodes; ``onnx.load`` and onnxruntime read the file like any other.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from sealserve.models._weights import Param, generate

__all__ = [
    "OPSET",
    "GraphBuilder",
    "ProgressFn",
]

#: The ONNX opset of every built graph (LayerNormalization needs 17).
OPSET = 17
_IR_VERSION = 8

#: Called with (bytes written, bytes in total) while a model is written.
ProgressFn = Callable[[int, int], None]

# Buffers draw from other random streams than parameters.
_BUFFER_INDEX = 1 << 32

_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int) -> bytes:
    return _varint(field << 3 | 2)  # wire type 2: length-delimited


class GraphBuilder:
    """Builds one ONNX graph; parameters are declared now and generated when written."""

    def __init__(self, name: str, *, seed: int, doc: str = "") -> None:
        if not name:
            raise ValueError("name must not be empty")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.name = name
        self.seed = seed
        self.doc = doc
        self.params: list[Param] = []
        self._param_names: set[str] = set()
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._counter = 0
        self._buffers = 0
        self.metadata: dict[str, str] = {}

    # -- declaring ----------------------------------------------------------------------------

    def _fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self._inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        """Expose ``value`` as the graph output ``name`` (through an Identity if renamed)."""
        if value != name:
            self._nodes.append(helper.make_node("Identity", [value], [name]))
        self._outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def param(self, param: Param) -> str:
        if param.name in self._param_names:
            raise ValueError(f"parameter {param.name!r} is declared twice")
        self._param_names.add(param.name)
        self.params.append(param)
        return param.name

    def buffer(self, spec: Param) -> str:
        """A ``Constant`` node named ``spec.name`` with generated values: a buffer, such as
        BatchNorm's running statistics, that is part of the model but not a parameter."""
        if spec.name in self._param_names:
            raise ValueError(f"{spec.name!r} is declared twice")
        self._param_names.add(spec.name)
        self._buffers += 1
        array = generate(spec, seed=self.seed, index=_BUFFER_INDEX + self._buffers)
        tensor = numpy_helper.from_array(array, name=spec.name)
        self._nodes.append(helper.make_node("Constant", [], [spec.name], value=tensor))
        return spec.name

    def const(self, value: npt.ArrayLike, *, dtype: npt.DTypeLike = np.int64) -> str:
        """A ``Constant`` node holding ``value`` (shared between identical uses)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        name = self._consts.get(key)
        if name is None:
            name = self._fresh("const")
            tensor = numpy_helper.from_array(array, name=name)
            self._nodes.append(helper.make_node("Constant", [], [name], value=tensor))
            self._consts[key] = name
        return name

    def op(self, op_type: str, inputs: Sequence[str], *, hint: str = "", **attrs: Any) -> str:
        """Add a node with one output and return the output's name."""
        out = self._fresh(hint or op_type.lower())
        self._nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    @property
    def parameter_count(self) -> int:
        return sum(p.size for p in self.params)

    @property
    def weight_bytes(self) -> int:
        return sum(p.nbytes for p in self.params)

    # -- writing ------------------------------------------------------------------------------

    def _skeleton(self) -> tuple[bytes, bytes]:
        """The model without its graph, and the graph without its initializers, serialized."""
        graph = helper.make_graph(self._nodes, self.name, self._inputs, self._outputs)
        if self.doc:
            graph.doc_string = self.doc
        model = helper.make_model(
            helper.make_graph([], self.name, [], []),
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="sealserve",
            ir_version=_IR_VERSION,
        )
        model.ClearField("graph")
        helper.set_model_props(model, self.metadata)
        return bytes(model.SerializeToString()), bytes(graph.SerializeToString())

    def _tensor_header(self, param: Param) -> bytes:
        header = TensorProto(name=param.name, data_type=TensorProto.FLOAT, dims=param.shape)
        return bytes(header.SerializeToString())

    def to_model(self) -> onnx.ModelProto:
        """The whole model in memory (for small graphs and tests; :meth:`write` streams)."""
        model_bytes, graph_bytes = self._skeleton()
        model: onnx.ModelProto = onnx.ModelProto.FromString(model_bytes)
        model.graph.ParseFromString(graph_bytes)
        for index, param in enumerate(self.params):
            array = generate(param, seed=self.seed, index=index)
            model.graph.initializer.append(numpy_helper.from_array(array, name=param.name))
        return model

    def write(self, path: Path, *, progress: ProgressFn | None = None) -> Path:
        """Write the model to ``path`` atomically, generating one tensor at a time."""
        model_bytes, graph_bytes = self._skeleton()
        headers = [self._tensor_header(p) for p in self.params]
        entries: list[bytes] = []
        graph_size = len(graph_bytes)
        for header, param in zip(headers, self.params, strict=True):
            tensor_size = (
                len(header) + len(_tag(_RAW_DATA_FIELD)) + len(_varint(param.nbytes)) + param.nbytes
            )
            prefix = _tag(_INITIALIZER_FIELD) + _varint(tensor_size) + header
            prefix += _tag(_RAW_DATA_FIELD) + _varint(param.nbytes)
            entries.append(prefix)
            graph_size += len(prefix) + param.nbytes
        total = len(model_bytes) + len(_tag(_GRAPH_FIELD)) + len(_varint(graph_size)) + graph_size
        if total >= 2**31:
            raise ValueError(f"model {self.name!r} is {total} bytes, over protobuf's 2 GiB")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(model_bytes)
                fh.write(_tag(_GRAPH_FIELD) + _varint(graph_size))
                fh.write(graph_bytes)
                done = fh.tell()
                for index, (prefix, param) in enumerate(zip(entries, self.params, strict=True)):
                    array = generate(param, seed=self.seed, index=index)
                    fh.write(prefix)
                    fh.write(array.astype("<f4", copy=False).reshape(-1).view(np.uint8).data)
                    done += len(prefix) + param.nbytes
                    del array
                    if progress is not None:
                        progress(done, total)
                if fh.tell() != total:  # pragma: no cover - the framing arithmetic is wrong
                    raise AssertionError(f"wrote {fh.tell()} bytes, planned {total}")
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path
