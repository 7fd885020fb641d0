"""Measured templates: launches that fork from a template each have their own key, their own
attestation channel and evidence of the entry's measurement, get the signals and exit status of
a launch, and go back to fresh launches when the template is gone."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sealserve.attest import Policy, report_data_for, verify_evidence
from sealserve.attest.tee import PlatformClient, PlatformServer, SimulatedPlatform
from sealserve.errors import AttestationError
from tests.integration.attest._probe_io import evidence_of, launch_probe

pytestmark = pytest.mark.integration


def _template_of(platform: SimulatedPlatform, entry: str, *, bound_s: float = 60.0) -> int:
    """The pid of ``entry``'s template once it runs (polled; a bound, not a measurement)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        for template in platform.templates():
            if template["entry"] == entry:
                return int(template["pid"])  # type: ignore[call-overload]
        time.sleep(0.05)
    raise AssertionError(f"no template of {entry} within {bound_s} s")


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def templated(platform: SimulatedPlatform) -> tuple[SimulatedPlatform, int]:
    platform.prepare("attest-probe")
    return platform, _template_of(platform, "attest-probe")


def test_each_forked_launch_has_its_own_key_and_evidence(
    templated: tuple[SimulatedPlatform, int],
) -> None:
    platform, template_pid = templated
    nonce = os.urandom(32)
    launches = []
    for _ in range(3):
        process, doc = launch_probe(platform, nonce, "--fresh-key", "--hold")
        launches.append((process, doc))
        assert _parent_of(process.pid) == template_pid  # forked from the template
        assert process.pid != template_pid
    keys = [bytes.fromhex(doc["public_key"]) for _, doc in launches]
    assert len(set(keys)) == 3  # made after the fork: never shared, never the template's
    measurement = platform.measurement("attest-probe")
    policy = Policy(measurements=frozenset({measurement}))
    for i, (process, doc) in enumerate(launches):
        assert process.measurement == measurement
        evidence = evidence_of(doc)
        claims = verify_evidence(
            evidence, policy, report_data=report_data_for(keys[i], nonce),
            trust=platform.trust_anchors(), now=time.time(),
        )  # fmt: skip
        assert claims.entry == "attest-probe"
        other = keys[(i + 1) % 3]  # another launch's key: this evidence does not vouch for it
        with pytest.raises(AttestationError):
            verify_evidence(
                evidence, policy, report_data=report_data_for(other, nonce),
                trust=platform.trust_anchors(), now=time.time(),
            )  # fmt: skip
    assert [t["forks"] for t in platform.templates()] == [3]
    for process, _ in launches:  # a forked launch takes signals and reports its status
        process.terminate()
        assert process.wait(30) == -signal.SIGTERM
        process.close()


def test_a_launcher_cannot_start_a_template(templated: tuple[SimulatedPlatform, int]) -> None:
    platform, _ = templated
    process, doc = launch_probe(
        platform, os.urandom(32), "--fresh-key", env={"SEALSERVE_TEE_TEMPLATE": "1"}
    )
    assert "evidence" in doc  # it ran as a launch, not as a fork server
    assert process.wait(30) == 0
    process.close()


def test_launches_start_afresh_when_the_template_is_gone(
    templated: tuple[SimulatedPlatform, int],
) -> None:
    platform, template_pid = templated
    os.kill(template_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while platform.templates() and time.monotonic() < deadline:
        process, _ = launch_probe(platform, os.urandom(32), "--fresh-key")
        process.close()
    assert not platform.templates()
    process, _ = launch_probe(platform, os.urandom(32), "--fresh-key", "--hold")
    assert _parent_of(process.pid) != template_pid
    assert process.measurement == platform.measurement("attest-probe")
    process.close()


def test_the_daemon_prepares_templates_on_request(
    platform: SimulatedPlatform, socket_dir: Path
) -> None:
    with (
        PlatformServer(platform, socket_path=socket_dir / "tee.sock") as server,
        PlatformClient(server.socket_path) as client,
    ):
        client.prepare("attest-probe", config={"k": "v"})
        _template_of(platform, "attest-probe")
        entries = [t["entry"] for t in client.templates()]
        assert entries == ["attest-probe"]
        process, doc = launch_probe(client, os.urandom(32), "--fresh-key", config={"k": "v"})
        assert doc["config"] == {"k": "v"}
        assert process.wait(30) == 0
        process.close()
        with pytest.raises(Exception, match="entry must be one of"):
            client.prepare("no-such-entry")
