"""Sealing keys on the simulated platform: what EGETKEY gives an enclave, on the launch channel."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sealserve.attest.tee import SimulatedPlatform
from tests.integration.attest._probe_io import launch_probe

_REPORT_DATA = bytes(64)


def _probe_key(platform: SimulatedPlatform, **kwargs: object) -> str:
    process, doc = launch_probe(platform, _REPORT_DATA, "--sealing-key", **kwargs)
    assert process.wait(30) == 0
    process.close()
    return str(doc["sealing_key_sha256"])


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def test_the_same_code_gets_the_same_key_and_nothing_else_does(
    platform: SimulatedPlatform, tmp_path: Path, frozen_package: Path
) -> None:
    first = _probe_key(platform)
    # the key is the one the platform derives for this measurement, after any relaunch
    assert first == _probe_key(platform)
    assert first == _fingerprint(platform.unlaunched_sealing_key("attest-probe", "attest-probe"))
    # another measurement (another launch config), or a debug launch, gets another key
    assert _probe_key(platform, config={"x": "1"}) != first
    assert _probe_key(platform, debug=True) != first
    # another purpose of the same code is another key
    assert _fingerprint(platform.unlaunched_sealing_key("attest-probe", "other")) != first
    # another platform (another sealing root) gives the same code another key
    with SimulatedPlatform(data_dir=tmp_path / "other", package_dir=frozen_package) as other:
        assert _probe_key(other) != first
    # the same platform reopened (its root persists in its data directory) gives the same key
    data_dir = tmp_path / "again"
    with SimulatedPlatform(data_dir=data_dir, package_dir=frozen_package) as again:
        before = _probe_key(again)
    with SimulatedPlatform(data_dir=data_dir, package_dir=frozen_package) as again:
        assert _probe_key(again) == before
    root = data_dir / "tee" / "sealing.key"
    assert root.stat().st_mode & 0o077 == 0
