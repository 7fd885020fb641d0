"""``sealserve owner`` and ``sealserve user`` commands refused before any connection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.attest import Policy
from sealserve.cli import app

runner = CliRunner()
MEASUREMENT = "ab" * 32
MODEL_ID = "cd" * 32 + "/resnet"


def _policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(Policy(measurements=frozenset({MEASUREMENT})).to_dict()))
    return path


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    inputs = tmp_path / "in.npz"
    inputs.write_bytes(b"npz")
    return {
        "owner grant": ["owner", "grant", "resnet", "ef" * 32],
        "owner upload": ["owner", "upload", str(model), "--name", "m", "--grant", "ef" * 32],
        "user request-key": ["user", "request-key", MODEL_ID],
        "user infer": ["user", "infer", MODEL_ID, "--input", str(inputs)],
    }


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--allow-debug"], "--allow-debug"),
        (["--tcb-status", "SWHardeningNeeded"], "--tcb-status"),
        (["--allow-debug", "--tcb-status", "OutOfDate"], "--allow-debug, --tcb-status"),
        (["--measurement", MEASUREMENT], "--measurement"),
    ],
)
def test_policy_flags_beside_a_policy_file_are_refused(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    policy = _policy_file(tmp_path)
    for command, args in _commands(tmp_path).items():
        result = runner.invoke(
            app, [*args, "--policy", str(policy), *flags, "--data-dir", str(tmp_path)]
        )
        assert result.exit_code == 2, (command, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (command, lines)
        assert lines[0].startswith(f"error: {named} cannot be combined with --policy FILE"), (
            command,
            lines,
        )
        assert "in the policy file" in lines[0], lines


def test_serve_help_says_the_embedded_platform_is_for_development() -> None:
    result = runner.invoke(app, ["keyservice", "serve", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "Without --tee-socket, the simulated platform runs inside this" in text
    assert "platform signing key included" in text
    assert "for development only" in text
    assert "'sealserve up'" in text
