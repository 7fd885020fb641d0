"""``sealserve models list`` and ``sealserve models build``, through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from typer.testing import CliRunner

from sealserve.cli import app

runner = CliRunner()


def test_list_json_describes_every_model() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout)
    by_name = {m["name"]: m for m in models}
    assert by_name["resnet-50"]["parameters"] == 25_557_032
    assert by_name["resnet-50"]["source"] == "built"
    assert by_name["open-nsfw"]["source"] == "pretrained"
    assert by_name["bert-base"]["inputs"][0] == {
        "name": "input_ids",
        "dtype": "int64",
        "shape": ["batch", 128],
    }


def test_list_table_names_models_and_inputs() -> None:
    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "minilm-int8" in result.stdout
    assert "109,482,240" in result.stdout
    assert "float32[batch, 3, 224, 224]" in result.stdout


def test_build_writes_the_file_and_prints_its_path(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "build", "MobileNetV2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == tmp_path / "mobilenet-v2.onnx"
    onnx.checker.check_model(str(path))


def test_build_unknown_model_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "build", "alexnet", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: unknown model 'alexnet'; known models: mobilenet-v2, resnet-50, densenet-121, "
        "bert-base, distilbert, open-nsfw, minilm-int8"
    ]
    assert "Traceback" not in result.output


def test_build_refuses_bad_options(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    result = runner.invoke(app, ["models", "build", "resnet-50", "--out", str(afile)])
    assert result.exit_code == 2
    assert "is not a directory" in result.stderr
    result = runner.invoke(
        app, ["models", "build", "resnet-50", "--seq-len", "8", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "seq_len applies only" in result.stderr
    result = runner.invoke(
        app, ["models", "build", "mobilenet-v2", "--seed", "-3", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1
    assert "seed must be" in result.stderr


def test_build_help_explains() -> None:
    result = runner.invoke(app, ["models", "build", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "--out" in result.stdout
    assert "digest is checked" in result.stdout
