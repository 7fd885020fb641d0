"""Simulated evidence: any flipped bit of its wire form, and any other report_data, fails."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealserve._clock import ManualClock
from sealserve.attest import Evidence, Policy, report_data_for, verify_evidence
from sealserve.attest._measure import installed_package_dir
from sealserve.attest.tee import SimulatedPlatform
from sealserve.errors import AttestationError

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def platform() -> Iterator[SimulatedPlatform]:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "pkg" / "sealserve"
        shutil.copytree(
            installed_package_dir(), package, ignore=shutil.ignore_patterns("__pycache__")
        )
        clock = ManualClock(start=NOW)
        with SimulatedPlatform(data_dir=Path(tmp) / "data", package_dir=package, clock=clock) as p:
            yield p


def _check(platform: SimulatedPlatform, wire: bytes, report_data: bytes) -> None:
    evidence = Evidence.from_bytes(wire)
    policy = Policy(measurements=frozenset({platform.measurement("runtime")}))
    verify_evidence(
        evidence, policy, report_data=report_data, trust=platform.trust_anchors(), now=NOW
    )


@settings(deadline=None, max_examples=200)
@given(
    key=st.binary(min_size=1, max_size=64),
    nonce=st.binary(min_size=16, max_size=32),
    data=st.data(),
)
def test_any_flipped_bit_of_the_wire_form_fails(
    platform: SimulatedPlatform, key: bytes, nonce: bytes, data: st.DataObject
) -> None:
    report_data = report_data_for(key, nonce)
    wire = bytearray(platform.issue_unlaunched_evidence("runtime", report_data).to_bytes())
    _check(platform, bytes(wire), report_data)
    bit = data.draw(st.integers(0, len(wire) * 8 - 1), label="bit")
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(AttestationError, match=r"^attestation failed$"):
        _check(platform, bytes(wire), report_data)


@settings(deadline=None, max_examples=100)
@given(
    key=st.binary(min_size=1, max_size=64),
    nonce=st.binary(min_size=16, max_size=32),
    other=st.binary(min_size=16, max_size=32),
)
def test_evidence_binds_exactly_one_key_and_nonce(
    platform: SimulatedPlatform, key: bytes, nonce: bytes, other: bytes
) -> None:
    wire = platform.issue_unlaunched_evidence("runtime", report_data_for(key, nonce)).to_bytes()
    if other != nonce:
        with pytest.raises(AttestationError):
            _check(platform, wire, report_data_for(key, other))
    if other != key:
        with pytest.raises(AttestationError):
            _check(platform, wire, report_data_for(other, nonce))
