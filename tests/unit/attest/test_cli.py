"""``sealserve attest`` commands that need no process: measure, verify-dcap, public-key."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from sealserve.attest import measure
from sealserve.cli import app

runner = CliRunner()
SGX_NOW = "1750416971"


def _dcap(folder: Path, name: str) -> list[str]:
    return [str(folder / "dcap" / name), str(folder / "dcap" / f"{name}_collateral.json")]


def test_measure_prints_the_installed_measurement(frozen_package: Path) -> None:
    result = runner.invoke(app, ["attest", "measure", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == {
        "entry": "runtime",
        "module": "sealserve.runtime._main",
        "config": {},
        "measurement": measure("runtime"),
    }
    plain = runner.invoke(
        app, ["attest", "measure", "--entry", "keyservice", "--config", "a=b", "--config", "c="]
    )
    assert plain.stdout.strip() == measure("keyservice", config={"a": "b", "c": ""})


def test_measure_refuses_bad_input_in_one_line() -> None:
    for args, needle in [
        (["--entry", "shell"], "entry must be one of"),
        (["--config", "novalue"], "is not KEY=VALUE"),
    ]:
        result = runner.invoke(app, ["attest", "measure", *args])
        assert result.exit_code == 2
        assert needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_measure_help_points_to_the_grantable_runtime_measurement() -> None:
    result = runner.invoke(app, ["attest", "measure", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "exit 78" in text
    assert "'sealserve instance measurement'" in text


def test_verify_dcap_json(testvectors_dir: Path) -> None:
    result = runner.invoke(
        app,
        ["attest", "verify-dcap", *_dcap(testvectors_dir, "sgx_quote"), "--now", SGX_NOW, "--json"],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "status": "ConfigurationAndSWHardeningNeeded",
        "advisories": ["INTEL-SA-00289", "INTEL-SA-00615"],
        "measurement": "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
        "debug": False,
    }
    text = runner.invoke(
        app, ["attest", "verify-dcap", *_dcap(testvectors_dir, "tdx_quote"), "--now", "1750414563"]
    )
    assert text.exit_code == 0
    assert "UpToDate" in text.stdout


def test_verify_dcap_failures_exit_non_zero_with_one_line(testvectors_dir: Path) -> None:
    cases = [
        ([*_dcap(testvectors_dir, "sgx_quote"), "--now", str(int(time.time()))], 1, "Expired"),
        (
            [*_dcap(testvectors_dir, "tdx_quote_outdated"), "--now", "1771498731"],
            1,
            "No matching TCB",
        ),
        (["missing-quote", "missing.json", "--now", SGX_NOW], 2, "cannot read missing-quote"),
        ([*_dcap(testvectors_dir, "sgx_quote"), "--now", "-5"], 2, "--now"),
    ]
    for args, code, needle in cases:
        result = runner.invoke(app, ["attest", "verify-dcap", *args])
        assert result.exit_code == code, (args, result.stderr)
        assert needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stdout == ""


def test_public_key_without_a_platform(tmp_path: Path) -> None:
    result = runner.invoke(app, ["attest", "platform", "public-key", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: No simulated platform public key")
    assert f"sealserve up --data-dir '{tmp_path}'" in result.stderr
    assert f"sealserve attest platform serve --data-dir '{tmp_path}'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_explains_every_command() -> None:
    for args in (["attest"], ["attest", "platform"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0
    listing = runner.invoke(app, ["attest", "--help"]).stdout
    for command in ("measure", "verify-dcap", "probe", "platform"):
        assert command in listing
