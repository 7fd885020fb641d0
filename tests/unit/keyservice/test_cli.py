"""``sealserve owner`` and ``sealserve user`` commands refused before any connection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.attest import Policy
from sealserve.cli import app
from tests.unit.runtime.graphs import dense_model

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
        (["--reference-values", "image.json"], "--reference-values"),
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


@pytest.mark.parametrize("role", ["owner", "user"])
def test_a_missing_identity_names_the_init_command(tmp_path: Path, role: str) -> None:
    commands = {
        "owner": [
            ["owner", "upload", "MODEL", "--name", "m"],
            ["owner", "grant", "resnet", "ef" * 32, "--measurement", MEASUREMENT],
            ["owner", "register"],
        ],
        "user": [
            ["user", "infer", MODEL_ID, "--input", "INPUT"],
            ["user", "request-key", MODEL_ID, "--measurement", MEASUREMENT],
            ["user", "register"],
        ],
    }[role]
    model = tmp_path / "m.onnx"
    model.write_bytes(
        dense_model(1, inputs=4, outputs=2)
    )  # a valid ONNX model: upload checks it first
    inputs = tmp_path / "in.npz"
    inputs.write_bytes(b"npz")
    for command in commands:
        args = [str(model) if a == "MODEL" else str(inputs) if a == "INPUT" else a for a in command]
        result = runner.invoke(app, [*args, "--data-dir", str(tmp_path)])
        assert result.exit_code == 1, (command, result.output)
        path = tmp_path / role / "identity.pem"
        assert result.stderr.strip() == (
            f"error: No {role} identity at '{path}'. "
            f"Create it first: sealserve {role} init --data-dir '{tmp_path}'"
        ), command
    custom = tmp_path / "elsewhere.pem"
    result = runner.invoke(app, [role, "register", "--identity", str(custom)])
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(f"sealserve {role} init --identity '{custom}'")


def test_a_policy_of_measurements_and_reference_values(tmp_path: Path) -> None:
    from sealserve._cli.keyservice import build_policy
    from sealserve.attest import ReferenceValues, TpmReference

    image = ReferenceValues(name="img", tpm=TpmReference(pcrs={7: {"11" * 32}}))
    path = tmp_path / "image.json"
    path.write_text(json.dumps(image.to_dict()))
    both = build_policy([MEASUREMENT], None, allow_debug=False, tcb_statuses=None,
                        reference_values=[path])  # fmt: skip
    assert both == Policy(measurements=frozenset({MEASUREMENT}), reference_values=(image,))
    alone = build_policy(None, None, allow_debug=False, tcb_statuses=None, reference_values=[path])
    assert alone.reference_values == (image,)
    assert not alone.measurements
    path.write_text('{"version": 1, "tpm": {"pcrs": {"7": ["zz"]}}}')
    with pytest.raises(ValueError, match=r"tpm\.pcrs\.7"):
        build_policy(None, None, allow_debug=False, tcb_statuses=None, reference_values=[path])
    with pytest.raises(ValueError, match="--reference-values FILE"):
        build_policy(None, None, allow_debug=False, tcb_statuses=None)
