"""The real commands: ``sealserve attest platform serve`` (a daemon), ``sealserve attest probe``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from sealserve.attest import Policy, TrustAnchors, report_data_for, verify_evidence
from sealserve.attest.tee import PlatformClient
from sealserve.cli import app
from tests.integration.attest._probe_io import evidence_of, launch_probe


def _wait_for(path: Path, proc: subprocess.Popen[str], *, bound_s: float = 60.0) -> None:
    deadline = time.monotonic() + bound_s
    while not path.exists():
        assert proc.poll() is None, f"the daemon exited: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "the daemon did not create its socket"
        time.sleep(0.05)


def test_platform_daemon_serves_launches_and_stops_on_sigterm(
    tmp_path: Path, socket_dir: Path
) -> None:
    sock, data = socket_dir / "tee.sock", tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealserve",
            "attest",
            "platform",
            "serve",
            "--socket",
            str(sock),
            "--data-dir",
            str(data),
            "--tcb-status",
            "SWHardeningNeeded",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(sock, proc)
        report_data = report_data_for(os.urandom(32), os.urandom(32))
        with PlatformClient(sock) as client:
            process, doc = launch_probe(client, report_data)
            assert process.wait(30) == 0
            process.close()
            expected = client.measurement("attest-probe")
        trust = TrustAnchors.from_data_dir(data)
        policy = Policy(
            measurements=frozenset({expected}),
            tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded"}),
        )
        claims = verify_evidence(
            evidence_of(doc), policy, report_data=report_data, trust=trust, now=time.time()
        )
        assert claims.tcb_status == "SWHardeningNeeded"
        assert oct((data / "tee" / "platform.key").stat().st_mode & 0o777) == oct(0o600)
        public = CliRunner().invoke(
            app, ["attest", "platform", "public-key", "--data-dir", str(data)]
        )
        assert public.exit_code == 0
        assert bytes.fromhex(public.stdout.strip()) in trust.simulated_platform_keys
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not sock.exists()
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events[:2] == ["platform.opened", "platform.serving"]
    assert "platform.launched" in events
    assert events[-1] == "platform.closed"


def test_serve_refuses_bad_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "attest",
            "platform",
            "serve",
            "--socket",
            str(tmp_path / "s"),
            "--data-dir",
            str(tmp_path),
            "--tcb-status",
            "Fine",
        ],
    )
    assert result.exit_code == 2
    assert "--tcb-status must be one of" in result.stderr


def test_probe_command_end_to_end(tmp_path: Path, frozen_package: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["attest", "probe", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verified"] is True
    assert doc["entry"] == "attest-probe"
    assert doc["debug"] is False
    debug = runner.invoke(
        app, ["attest", "probe", "--data-dir", str(tmp_path), "--debug", "--json"]
    )
    assert debug.exit_code == 0, debug.stderr
    assert json.loads(debug.stdout)["debug"] is True


def test_probe_command_reports_an_unreachable_daemon(tmp_path: Path, socket_dir: Path) -> None:
    result = CliRunner().invoke(
        app, ["attest", "probe", "--data-dir", str(tmp_path), "--socket", str(socket_dir / "x")]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the TEE platform")
    assert len(result.stderr.strip().splitlines()) == 1
