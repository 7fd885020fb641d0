"""``upload_model`` and ``sealserve owner upload`` seal ONNX models only: any other file is
refused in one line that names it, before a byte is sealed or a call is made."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.cli import app
from sealserve.client import check_onnx_model, upload_model
from sealserve.errors import NotFound
from sealserve.instance import ModelStore
from tests.unit.runtime.graphs import dense_model
from tests.unit.runtime.keyservice import InProcessKeyService


@pytest.fixture
def ks(tmp_path: Path) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path / "ks")
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def model() -> bytes:
    return dense_model(2)


def _not_models(tmp_path: Path, model: bytes) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.onnx"
    text.write_text("these are my notes, not a model\n")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model[: len(model) // 2])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    return {
        "text": (text, "The model does not have an ir_version set properly."),
        "truncated": (truncated, "Unable to parse proto"),
        "empty": (empty, "The model does not have an ir_version set properly."),
    }


@pytest.mark.parametrize("kind", ["text", "truncated", "empty"])
def test_a_file_that_is_not_an_onnx_model_is_not_uploaded(
    ks: InProcessKeyService, tmp_path: Path, model: bytes, kind: str
) -> None:
    path, reason = _not_models(tmp_path, model)[kind]
    store = ModelStore(tmp_path / "store")
    calls_before = dict(ks.calls)
    with pytest.raises(
        ValueError, match="^" + re.escape(f"'{path}' is not an ONNX model: ")
    ) as caught:
        upload_model(ks.owner, store, "m", path)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)
    assert store.list() == []  # nothing sealed
    with pytest.raises(NotFound):
        ks.owner.model("m")  # no key handed over
    assert dict(ks.calls) == calls_before


def test_a_binary_file_is_checked_and_rewound(
    ks: InProcessKeyService, tmp_path: Path, model: bytes
) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ValueError, match=r"^'BytesIO' is not an ONNX model: "):
        upload_model(ks.owner, store, "m", io.BytesIO(b"x" * 100))
    source = io.BytesIO(b"--" + model)
    source.seek(2)
    receipt = upload_model(ks.owner, store, "m", source)
    assert receipt.plain_bytes == len(model)  # the whole model, from where it was
    assert [m.model_id for m in store.list()] == [ks.owner.model_id("m")]


def test_an_onnx_model_uploads(ks: InProcessKeyService, tmp_path: Path, model: bytes) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    check_onnx_model(path)
    receipt = upload_model(ks.owner, ModelStore(tmp_path / "store"), "m", path)
    assert (receipt.key_version, receipt.plain_bytes) == (1, len(model))


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_the_cli_refuses_it_in_one_line_before_connecting(
    tmp_path: Path, model: bytes, kind: str
) -> None:
    path, reason = _not_models(tmp_path, model)[kind]
    result = CliRunner().invoke(
        app,
        ["owner", "upload", str(path), "--name", "m", "--data-dir", str(tmp_path / "data"),
         "--keyservice", "http://127.0.0.1:9"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: '{path}' is not an ONNX model: "), lines
    assert reason in lines[0]
    assert not (tmp_path / "data" / "store").exists()
