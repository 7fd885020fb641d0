"""The real ``sealserve models`` command in a subprocess: list, build, and run what it built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sealserve.models import get_spec


def _sealserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealserve", *args],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_list_json_in_a_fresh_process() -> None:
    result = _sealserve("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    names = [m["name"] for m in json.loads(result.stdout)]
    assert names[:3] == ["mobilenet-v2", "resnet-50", "densenet-121"]


def test_built_and_copied_models_run(tmp_path: Path) -> None:
    for name in ("mobilenet-v2", "open-nsfw"):
        result = _sealserve("models", "build", name, "--out", str(tmp_path))
        assert result.returncode == 0, result.stderr
        path = Path(result.stdout.strip())
        spec = get_spec(name)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out, *_) = session.run(None, spec.example_inputs(seed=1))
        assert np.isfinite(out).all()
    again = _sealserve("models", "build", "mobilenet-v2", "--out", str(tmp_path))
    assert again.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mobilenet-v2.onnx", "open-nsfw.onnx"]


def test_unknown_model_exits_non_zero_without_a_traceback(tmp_path: Path) -> None:
    result = _sealserve("models", "build", "nope", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown model 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
