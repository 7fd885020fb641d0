"""The built architectures: published parameter counts, valid ONNX, real work, real outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sealserve.models import build, get_spec, imagenet_preprocess, sample_image_path, tokenize

PUBLISHED = {
    "mobilenet-v2": 3_504_872,
    "resnet-50": 25_557_032,
    "densenet-121": 7_978_856,
    "bert-base": 109_482_240,
    "distilbert": 66_362_880,
}
SLOW = {"bert-base", "distilbert"}
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in PUBLISHED]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Zoo:
    """Builds each model once per module, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self.paths:
            self.paths[name] = build(name, self.root)
        return self.paths[name]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Zoo]:
    zoo = _Zoo(tmp_path_factory.mktemp("zoo"))
    yield zoo
    for path in zoo.paths.values():  # 0.9 GB in all: do not leave it to pytest's rotation
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("name", MODELS)
def test_initializers_are_the_published_parameters(name: str, zoo: _Zoo) -> None:
    path = zoo.path(name)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    initializers = model.graph.initializer
    assert sum(int(np.prod(t.dims)) for t in initializers) == PUBLISHED[name]
    assert get_spec(name).parameters == PUBLISHED[name]
    # No initializer is all zeros or a copy of another: onnxruntime would fold those away.
    digests = set()
    for tensor in initializers:
        values = numpy_helper.to_array(tensor)
        assert values.dtype == np.float32
        assert np.count_nonzero(values) >= 0.999 * values.size, tensor.name
        if values.size > 1:
            assert np.unique(values).size > 1, tensor.name
        digests.add(hashlib.sha256(values.tobytes()).digest())
    assert len(digests) == len(initializers)
    # Everything else is a Constant node: shapes, scalars and BatchNorm statistics.
    inputs = {i.name for i in model.graph.input}
    assert not inputs & {t.name for t in initializers}


@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_runs_the_example_input(name: str, zoo: _Zoo) -> None:
    spec = get_spec(name)
    session = _session(zoo.path(name))
    assert [i.name for i in session.get_inputs()] == [t.name for t in spec.inputs]
    assert [o.name for o in session.get_outputs()] == [t.name for t in spec.outputs]
    feeds = spec.example_inputs(seed=3, batch=2)
    outputs = dict(zip([t.name for t in spec.outputs], session.run(None, feeds), strict=True))
    for tensor in spec.outputs:
        value = outputs[tensor.name]
        expected = tuple(2 if d == "batch" else d for d in tensor.shape)
        assert value.shape == expected
        assert value.dtype == tensor.dtype
        assert np.isfinite(value).all()
        assert float(value.std()) > 1e-3
    first = next(iter(outputs.values()))
    assert not np.allclose(first[0], first[1])  # different inputs, different outputs


@pytest.mark.parametrize("name", ["mobilenet-v2", "resnet-50", "densenet-121"])
def test_classifiers_on_a_real_photo(name: str, zoo: _Zoo) -> None:
    spec = get_spec(name)
    inputs = spec.preprocess(sample_image_path())
    np.testing.assert_array_equal(inputs["input"], imagenet_preprocess(sample_image_path()))
    (logits,) = _session(zoo.path(name)).run(None, inputs)
    (top,) = spec.postprocess({"logits": logits}, inputs)
    assert len(top) == 5
    assert top[0].score >= top[-1].score
    # Seeded weights are not trained: the photo gets a spread of logits, not one certainty.
    assert 0.001 < top[0].score < 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert-base", "distilbert"])
def test_encoders_on_real_text(name: str, zoo: _Zoo) -> None:
    spec = get_spec(name)
    texts = ["Grace Hopper wrote the first compiler.", "Sealed inference keeps data private."]
    inputs = spec.preprocess(texts)
    assert inputs["input_ids"].shape == (2, 128)
    session = _session(zoo.path(name))
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, inputs), strict=True))
    embedding = spec.postprocess(outputs, inputs)
    assert embedding.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    hidden = outputs["last_hidden_state"]
    real = int(inputs["attention_mask"][0].sum())
    assert real == len(tokenize(texts[:1])["input_ids"][0])
    assert not np.allclose(hidden[0, 1], hidden[0, 2])  # tokens differ


def test_same_seed_same_file_other_seed_other_weights(tmp_path: Path) -> None:
    a = build("mobilenet-v2", tmp_path / "a")
    b = build("mobilenet-v2", tmp_path / "b")
    c = build("mobilenet-v2", tmp_path / "c", seed=7)
    assert c.name == "mobilenet-v2-seed7.onnx"
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_streamed_file_is_the_in_memory_model(tmp_path: Path) -> None:
    graph = get_spec("mobilenet-v2").graph(seed=1)
    seen: list[tuple[int, int]] = []
    path = graph.write(tmp_path / "m.onnx", progress=lambda done, total: seen.append((done, total)))
    model = onnx.load(str(path))
    assert model == graph.to_model()
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata == {"sealserve.model": "mobilenet-v2", "sealserve.seed": "1"}
    assert seen[-1][0] == seen[-1][1] == path.stat().st_size
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert graph.parameter_count == 3_504_872


def test_build_is_idempotent_and_force_rebuilds(tmp_path: Path) -> None:
    path = build("mobilenet-v2", tmp_path)
    path.write_bytes(b"stale")  # a file already there is kept...
    assert build("mobilenet-v2", tmp_path) == path
    assert path.read_bytes() == b"stale"
    build("mobilenet-v2", tmp_path, force=True)  # ...unless forced
    onnx.checker.check_model(str(path))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sequence_length_is_a_parameter(tmp_path: Path) -> None:
    spec = get_spec("distilbert", seq_len=16)
    graph = spec.graph()
    path = graph.write(tmp_path / spec.file_name())
    assert path.name == "distilbert-seq16.onnx"
    session = _session(path)
    assert session.get_inputs()[0].shape == ["batch", 16]
    (hidden,) = session.run(None, spec.example_inputs(batch=3))
    assert hidden.shape == (3, 16, 768)
    assert graph.parameter_count == 66_362_880  # the position table keeps its 512 rows


@pytest.mark.parametrize("seq_len", [0, 513, -1])
def test_bad_sequence_length(seq_len: int) -> None:
    with pytest.raises(ValueError, match="seq_len must be within"):
        get_spec("bert-base", seq_len=seq_len)
