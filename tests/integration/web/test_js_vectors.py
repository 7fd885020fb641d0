"""sealserve.js (the browser client) against the wire's known-answer vectors, in Node.js:
the same tests/vectors/*.json the Python implementation passes (docs/protocol.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import sealserve.gateway

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors"
RUNNER = Path(__file__).with_name("run_vectors.mjs")
MODULE = Path(sealserve.gateway.__file__).with_name("web") / "sealserve.js"

pytestmark = pytest.mark.integration


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed (scripts/ci-deps installs nodejs)")
    return found


def run(folder: Path) -> dict[str, Any]:
    done = subprocess.run(
        [node(), str(RUNNER), str(MODULE), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def expected_count(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text("ascii"))
        for section in ("valid", "invalid", "hkdf", "request_keys"):
            if path.name == "canonical.json" and section == "invalid":
                continue  # the module encodes canonical mappings; it has no decoder
            total += len(data.get(section, []))
    return total


def test_the_module_passes_every_vector() -> None:
    result = run(VECTORS)
    assert result["failed"] == []
    assert len(result["passed"]) == expected_count(VECTORS)


def test_a_changed_vector_fails(tmp_path: Path) -> None:
    """The runner can fail: a wrong envelope byte, and an invalid buffer swapped for a valid
    one, are both reported."""
    for path in VECTORS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    envelopes = json.loads((tmp_path / "envelopes.json").read_text("ascii"))
    first = envelopes["valid"][0]
    last = first["envelope_hex"][-2:]
    first["envelope_hex"] = first["envelope_hex"][:-2] + f"{int(last, 16) ^ 1:02x}"
    (tmp_path / "envelopes.json").write_text(json.dumps(envelopes), "ascii")
    tensors = json.loads((tmp_path / "tensors.json").read_text("ascii"))
    tensors["invalid"][0]["encoding_hex"] = tensors["valid"][0]["encoding_hex"]
    (tmp_path / "tensors.json").write_text(json.dumps(tensors), "ascii")
    result = run(tmp_path)
    failed = {f["name"] for f in result["failed"]}
    assert failed == {
        f"envelopes: {first['name']}",
        f"tensors: {tensors['invalid'][0]['name']}",
    }
