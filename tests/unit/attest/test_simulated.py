"""The simulated platform without launching anything: key, snapshot, evidence, verification."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve import ResourceState, ResourceStateError
from sealserve._clock import ManualClock
from sealserve.attest import (
    FORMAT_SIMULATED,
    Evidence,
    Policy,
    TrustAnchors,
    in_measured_launch,
    launch_config,
    local_evidence,
    passed_fds,
    read_platform_public_key,
    report_data_for,
    verify_evidence,
)
from sealserve.attest.tee import SimulatedPlatform
from sealserve.crypto import canonical_decode, canonical_encode
from sealserve.errors import AttestationError, IdentityError, TeeError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "measurement_v1.json").read_text())
NOW = 1_800_000_000.0
KEY = bytes(range(32))
NONCE = bytes(range(100, 132))
RD = report_data_for(KEY, NONCE)


@pytest.fixture
def platform(tmp_path: Path, frozen_package: Path) -> Iterator[SimulatedPlatform]:
    clock = ManualClock(start=NOW)
    with SimulatedPlatform(
        data_dir=tmp_path / "data", package_dir=frozen_package, clock=clock
    ) as p:
        yield p


def _verify(
    evidence: Evidence,
    platform: SimulatedPlatform,
    *,
    policy: Policy | None = None,
    report_data: bytes = RD,
    now: float = NOW,
    trust: TrustAnchors | None = None,
) -> None:
    policy = policy or Policy(measurements=frozenset({platform.measurement("runtime")}))
    verify_evidence(
        evidence,
        policy,
        report_data=report_data,
        trust=trust or platform.trust_anchors(),
        now=now,
    )


def test_report_data_known_answer_and_binding() -> None:
    (kat,) = VECTORS["report_data"]
    value = report_data_for(bytes.fromhex(kat["public_key"]), bytes.fromhex(kat["nonce"]))
    assert value.hex() == kat["report_data"]
    assert len(value) == 64
    assert report_data_for(KEY + NONCE[:1], NONCE[1:]) != report_data_for(KEY, NONCE)
    with pytest.raises(ValueError, match="nonce"):
        report_data_for(KEY, b"short")
    with pytest.raises(ValueError, match="public_key"):
        report_data_for(b"", NONCE)


def test_key_files_and_states(tmp_path: Path, frozen_package: Path) -> None:
    data = tmp_path / "data"
    platform = SimulatedPlatform(data_dir=data, package_dir=frozen_package)
    assert platform.state is ResourceState.UNOPENED
    with pytest.raises(ResourceStateError, match="unopened"):
        platform.measurement("runtime")
    with platform:
        assert platform.state is ResourceState.OPENED
        key_file = data / "tee" / "platform.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "tee").stat().st_mode) == 0o700
        assert read_platform_public_key(data) == platform.public_key_bytes
        assert TrustAnchors.from_data_dir(data) == platform.trust_anchors()
        first_key = platform.public_key_bytes
        with pytest.raises(ResourceStateError, match="only once"):
            platform.open()
    assert platform.state is ResourceState.CLOSED
    with pytest.raises(ResourceStateError, match="closed"):
        platform.issue_unlaunched_evidence("runtime", RD)
    assert not list((data / "tee").glob("snapshot-*")), "the snapshot is removed on close"
    with SimulatedPlatform(data_dir=data, package_dir=frozen_package) as again:
        assert again.public_key_bytes == first_key  # the key persists


def test_a_platform_key_others_can_read_is_refused(tmp_path: Path, frozen_package: Path) -> None:
    data = tmp_path / "data"
    with SimulatedPlatform(data_dir=data, package_dir=frozen_package):
        pass
    os.chmod(data / "tee" / "platform.key", 0o644)
    with (
        pytest.raises(IdentityError, match="chmod 600"),
        SimulatedPlatform(data_dir=data, package_dir=frozen_package),
    ):
        pass


def test_missing_public_key_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(TeeError, match="platform serve"):
        read_platform_public_key(tmp_path)


def test_evidence_verifies_and_round_trips(platform: SimulatedPlatform) -> None:
    evidence = platform.issue_unlaunched_evidence("runtime", RD)
    assert evidence.format == FORMAT_SIMULATED
    assert evidence.measurement.hex() == platform.measurement("runtime")
    assert Evidence.from_bytes(evidence.to_bytes()) == evidence
    _verify(evidence, platform)


def test_evidence_for_another_key_or_nonce_fails(platform: SimulatedPlatform) -> None:
    evidence = platform.issue_unlaunched_evidence("runtime", RD)
    for other in (report_data_for(KEY[::-1], NONCE), report_data_for(KEY, NONCE[::-1])):
        with pytest.raises(AttestationError):
            _verify(evidence, platform, report_data=other)


def test_another_entry_or_config_does_not_satisfy_a_pinned_measurement(
    platform: SimulatedPlatform,
) -> None:
    for evidence in (
        platform.issue_unlaunched_evidence("keyservice", RD),
        platform.issue_unlaunched_evidence("runtime", RD, config={"memory_budget_mb": "1"}),
    ):
        with pytest.raises(AttestationError):
            _verify(evidence, platform)


def test_evidence_of_another_platform_fails(
    platform: SimulatedPlatform, tmp_path: Path, frozen_package: Path
) -> None:
    with SimulatedPlatform(data_dir=tmp_path / "rogue", package_dir=frozen_package) as rogue:
        forged = rogue.issue_unlaunched_evidence("runtime", RD)
    with pytest.raises(AttestationError):
        _verify(forged, platform)
    with pytest.raises(AttestationError):  # no simulated anchor at all
        _verify(platform.issue_unlaunched_evidence("runtime", RD), platform, trust=TrustAnchors())


def test_altered_evidence_fails(platform: SimulatedPlatform) -> None:
    evidence = platform.issue_unlaunched_evidence("runtime", RD)
    other = bytes.fromhex(platform.measurement("keyservice"))
    with pytest.raises(AttestationError):  # the convenience field lies about the raw bytes
        _verify(dataclasses.replace(evidence, measurement=other), platform)
    # Re-encode the body with another measurement, keeping the signature.
    outer = canonical_decode(evidence.raw)
    assert isinstance(outer["body"], bytes)
    body = canonical_decode(outer["body"])
    body["measurement"] = other
    forged_raw = canonical_encode({"body": canonical_encode(body), "signature": outer["signature"]})
    forged = dataclasses.replace(evidence, raw=forged_raw, measurement=other)
    with pytest.raises(AttestationError):
        _verify(forged, platform, policy=Policy(measurements=frozenset({other.hex()})))


def test_evidence_age_is_bounded(platform: SimulatedPlatform) -> None:
    evidence = platform.issue_unlaunched_evidence("runtime", RD)
    _verify(evidence, platform, now=NOW + 299)
    with pytest.raises(AttestationError):
        _verify(evidence, platform, now=NOW + 301)
    with pytest.raises(AttestationError):
        _verify(evidence, platform, now=NOW - 61)


def test_debug_evidence_needs_a_policy_that_allows_it(platform: SimulatedPlatform) -> None:
    evidence = platform.issue_unlaunched_evidence("runtime", RD, debug=True)
    assert evidence.debug
    with pytest.raises(AttestationError):
        _verify(evidence, platform)
    pinned = frozenset({platform.measurement("runtime")})
    _verify(evidence, platform, policy=Policy(measurements=pinned, allow_debug=True))


def test_a_platform_reporting_another_tcb_status(tmp_path: Path, frozen_package: Path) -> None:
    with SimulatedPlatform(
        data_dir=tmp_path / "d",
        package_dir=frozen_package,
        tcb_status="OutOfDate",
        clock=ManualClock(start=NOW),
    ) as stale:
        evidence = stale.issue_unlaunched_evidence("runtime", RD)
        assert evidence.tcb_status == "OutOfDate"
        with pytest.raises(AttestationError):
            _verify(evidence, stale)
        pinned = frozenset({stale.measurement("runtime")})
        lenient = Policy(measurements=pinned, tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
        _verify(evidence, stale, policy=lenient)
    with pytest.raises(ValueError, match="tcb_status"):
        SimulatedPlatform(data_dir=tmp_path, tcb_status="Fine")


def test_denials_are_fixed_and_the_reason_is_logged(
    platform: SimulatedPlatform, sealserve_logs: pytest.LogCaptureFixture
) -> None:
    evidence = platform.issue_unlaunched_evidence("runtime", RD, debug=True)
    with pytest.raises(AttestationError) as info:
        _verify(evidence, platform)
    assert str(info.value) == AttestationError.MESSAGE
    denied = [r for r in sealserve_logs.records if r.getMessage() == "attestation.denied"]
    assert len(denied) == 1
    assert denied[0].levelno == logging.DEBUG
    assert denied[0].sealserve_fields["reason"] == "debug"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        canonical_encode({"format": "sealserve-sim/1"}),
        canonical_encode({"format": "nope", "raw": b""}),
        canonical_encode({"format": "sealserve-sim/1", "raw": b"x"}),
        canonical_encode({"format": "sealserve-sim/1", "raw": b"", "collateral": b""}),
        canonical_encode({"format": "sgx-dcap", "raw": b"quote"}),
        canonical_encode({"format": "sgx-dcap", "raw": b"quote", "collateral": b"{}"}),
        canonical_encode({"format": "sealserve-sim/1", "raw": b"", "extra": 1}),
        b"\x00" * (300 * 1024),
    ],
)
def test_malformed_wire_evidence_is_the_fixed_error(data: bytes) -> None:
    with pytest.raises(AttestationError, match=r"^attestation failed$"):
        Evidence.from_bytes(data)


def test_evidence_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="format"):
        Evidence(format="x", measurement=b"", report_data=RD, raw=b"", debug=False)
    with pytest.raises(ValueError, match="64 bytes"):
        Evidence(format=FORMAT_SIMULATED, measurement=b"", report_data=b"", raw=b"", debug=False)


def test_no_evidence_outside_a_measured_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALSERVE_TEE_FD", raising=False)
    assert not in_measured_launch()
    with pytest.raises(TeeError, match="not inside a measured launch"):
        local_evidence(RD)
    with pytest.raises(ValueError, match="64 bytes"):
        local_evidence(b"short")


def test_launch_config_and_passed_fds_come_from_the_platform_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEALSERVE_TEE_CONFIG", '{"a": "b"}')
    monkeypatch.setenv("SEALSERVE_PASSED_FDS", "4,7")
    assert launch_config() == {"a": "b"}
    assert passed_fds() == (4, 7)
    monkeypatch.setenv("SEALSERVE_PASSED_FDS", "x")
    with pytest.raises(TeeError, match="SEALSERVE_PASSED_FDS"):
        passed_fds()
    monkeypatch.setenv("SEALSERVE_TEE_CONFIG", '{"a": 1}')
    with pytest.raises(TeeError, match="SEALSERVE_TEE_CONFIG"):
        launch_config()


def test_launcher_env_cannot_load_unmeasured_code() -> None:
    from sealserve.attest._platform import _child_env

    env = _child_env(
        {
            "LD_PRELOAD": "/tmp/evil.so",
            "LD_LIBRARY_PATH": "/tmp",
            "PYTHONPATH": "/tmp",
            "PYTHONSTARTUP": "/tmp/x.py",
            "OPENSSL_CONF": "/tmp/openssl.cnf",
            "OPENSSL_MODULES": "/tmp",
            "GCONV_PATH": "/tmp",
            "SEALSERVE_TEE_FD": "0",
            "SEALSERVE_PASSED_FDS": "0",
            "OMP_NUM_THREADS": "2",
            "SEALSERVE_LOG_LEVEL": "DEBUG",
        }
    )
    assert env == {"PATH": os.defpath}


def test_launcher_env_passes_only_the_allow_list() -> None:
    """Issue 10.1: the host chose the KeyService's master key through a variable the platform
    passed on (and ``HOME`` and ``ORT_LOAD_CONFIG_FROM_MODEL`` passed too): now only the locale
    does, and ``PATH`` is the platform's own."""
    from sealserve.attest._platform import ALLOWED_ENV, _child_env

    env = _child_env(
        {
            "SEALSERVE_KEYSERVICE_MASTER_KEY": "A" * 43,
            "HOME": "/tmp/evil-home",
            "ORT_LOAD_CONFIG_FROM_MODEL": "1",
            "PATH": "/tmp/evil-bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C",
        }
    )
    assert env == {"LANG": "C.UTF-8", "LC_ALL": "C", "PATH": os.defpath}
    assert frozenset({"LANG", "LC_ALL", "LC_CTYPE"}) == ALLOWED_ENV
