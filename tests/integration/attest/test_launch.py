"""Measured launch on an embedded platform: real child processes obtain real evidence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sealserve.attest import Policy, measure, report_data_for, verify_evidence
from sealserve.attest.tee import Launcher, MeasuredProcess, SimulatedPlatform
from sealserve.crypto import HpkeKeyPair
from sealserve.errors import AttestationError
from tests.integration.attest._probe_io import (
    evidence_of,
    launch_probe,
    probe_line_on_passed_fd,
)


def _fresh_report_data() -> tuple[bytes, bytes, bytes]:
    public_key, nonce = HpkeKeyPair.generate().public_key_bytes(), os.urandom(32)
    return public_key, nonce, report_data_for(public_key, nonce)


def test_a_launched_process_gets_evidence_that_verifies(platform: SimulatedPlatform) -> None:
    assert isinstance(platform, Launcher)
    config = {"memory_budget_mb": "512"}
    _, _, report_data = _fresh_report_data()
    process, doc = launch_probe(platform, report_data, config=config)
    assert isinstance(process, MeasuredProcess)
    assert process.wait(30) == 0
    process.close()
    assert doc["config"] == config
    evidence = evidence_of(doc)
    expected = measure("attest-probe", config=config)  # the verifier's own copy of the code
    assert process.measurement == expected == platform.measurement("attest-probe", config=config)
    claims = verify_evidence(
        evidence,
        Policy(measurements=frozenset({expected})),
        report_data=report_data,
        trust=platform.trust_anchors(),
        now=time.time(),
    )
    assert (claims.entry, claims.debug, claims.tcb_status) == ("attest-probe", False, "UpToDate")


def test_evidence_for_another_public_key_or_nonce_fails(platform: SimulatedPlatform) -> None:
    public_key, nonce, report_data = _fresh_report_data()
    process, doc = launch_probe(platform, report_data)
    process.close()
    policy = Policy(measurements=frozenset({platform.measurement("attest-probe")}))
    for other in (
        report_data_for(public_key, os.urandom(32)),
        report_data_for(os.urandom(32), nonce),
    ):
        with pytest.raises(AttestationError):
            verify_evidence(
                evidence_of(doc),
                policy,
                report_data=other,
                trust=platform.trust_anchors(),
                now=time.time(),
            )


def test_descriptors_are_handed_to_the_child(platform: SimulatedPlatform) -> None:
    _, _, report_data = _fresh_report_data()
    line = probe_line_on_passed_fd(platform, report_data)
    assert b'"passed_fds": 1' in line
    assert evidence_of(json.loads(line)).report_data == report_data


def test_debug_launches_yield_debug_evidence(platform: SimulatedPlatform) -> None:
    _, _, report_data = _fresh_report_data()
    process, doc = launch_probe(platform, report_data, debug=True)
    process.close()
    evidence = evidence_of(doc)
    assert evidence.debug
    pinned = frozenset({platform.measurement("attest-probe")})
    with pytest.raises(AttestationError):
        verify_evidence(
            evidence,
            Policy(measurements=pinned),
            report_data=report_data,
            trust=platform.trust_anchors(),
            now=time.time(),
        )
    claims = verify_evidence(
        evidence,
        Policy(measurements=pinned, allow_debug=True),
        report_data=report_data,
        trust=platform.trust_anchors(),
        now=time.time(),
    )
    assert claims.debug


def test_the_launcher_cannot_set_the_platform_variables(platform: SimulatedPlatform) -> None:
    _, _, report_data = _fresh_report_data()
    smuggled = {
        "SEALSERVE_TEE_FD": "0",
        "SEALSERVE_TEE_CONFIG": '{"forged": "yes"}',
        "SEALSERVE_PASSED_FDS": "0,1",
        "HARMLESS": "1",
    }
    process, doc = launch_probe(platform, report_data, env=smuggled)
    assert process.wait(30) == 0
    process.close()
    assert doc["config"] == {}
    assert doc["passed_fds"] == 0
    assert evidence_of(doc).measurement.hex() == platform.measurement("attest-probe")


def test_a_process_that_was_not_launched_cannot_get_evidence(tmp_path: Path) -> None:
    code = "from sealserve.attest import local_evidence; local_evidence(bytes(64))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSERVE_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "not inside a measured launch" in result.stderr
    # Pretending to have a channel does not help: nobody holding a platform key answers.
    forged = {**env, "SEALSERVE_TEE_FD": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=forged,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode != 0
    assert "TeeError" in result.stderr


def test_the_child_runs_the_snapshot_not_the_live_source(
    platform: SimulatedPlatform, frozen_package: Path
) -> None:
    before = platform.measurement("attest-probe")
    probe = frozen_package / "attest" / "_probe.py"
    probe.write_text("raise SystemExit(42)\n")  # an edit after the platform opened
    assert measure("attest-probe") != before
    _, _, report_data = _fresh_report_data()
    process, doc = launch_probe(platform, report_data)
    assert process.wait(30) == 0
    process.close()
    assert evidence_of(doc).measurement.hex() == before


def test_terminate_kill_and_exit_status(platform: SimulatedPlatform) -> None:
    _, _, report_data = _fresh_report_data()
    for action, signum in (("terminate", signal.SIGTERM), ("kill", signal.SIGKILL)):
        process, _ = launch_probe(platform, report_data, "--hold")
        assert process.returncode is None
        assert process.wait(0.01) is None
        getattr(process, action)()
        assert process.wait(30) == -signum
        assert process.returncode == -signum
        process.close()


def test_closing_the_platform_kills_what_it_launched(tmp_path: Path, frozen_package: Path) -> None:
    _, _, report_data = _fresh_report_data()
    with SimulatedPlatform(data_dir=tmp_path / "d", package_dir=frozen_package) as platform:
        process, _ = launch_probe(platform, report_data, "--hold")
    assert process.returncode == -signal.SIGKILL


def test_bad_launch_requests_name_the_problem(platform: SimulatedPlatform) -> None:
    with pytest.raises(ValueError, match="entry must be one of"):
        platform.launch("bash")
    with pytest.raises(ValueError, match="not open"):
        platform.launch("attest-probe", fds=[987])
    with pytest.raises(ValueError, match=">= 3"):
        platform.launch("attest-probe", fds=[1])
    with pytest.raises(TypeError, match="not one string"):
        platform.launch("attest-probe", args="abc")
    with pytest.raises(TypeError, match="config"):
        platform.launch("attest-probe", config={"n": 1})  # type: ignore[dict-item]
