"""The measured launch's log: events, replay, the report_data binding, the evidence wrapper."""

from __future__ import annotations

import hashlib

import pytest

from sealserve.attest._launch_log import (
    LaunchEvent,
    LaunchEvidence,
    LaunchLogMismatch,
    bind_report_data,
    register_hash,
    register_of,
)

KS = LaunchEvent(entry="keyservice", measurement=hashlib.sha256(b"ks").digest())
RT = LaunchEvent(entry="runtime", measurement=hashlib.sha256(b"rt").digest())
RD = bytes(range(64))


def test_replay_extends_as_rtmrs_and_pcrs_do() -> None:
    # PCR/RTMR extend: new = H(old || digest), from zeros
    value = bytes(32)
    for event in (KS, RT):
        value = hashlib.sha256(value + hashlib.sha256(event.encode()).digest()).digest()
    assert register_of([KS, RT], "sha256") == value
    assert register_of([], "sha384") == bytes(48)
    assert register_of([KS, RT], "sha384") != register_of([RT, KS], "sha384")
    assert LaunchEvent.decode(KS.encode()) == KS
    assert register_hash("rtmr3") == "sha384"
    assert register_hash("pcr.sha256.23") == "sha256"
    with pytest.raises(ValueError, match="register"):
        register_hash("pcr.sha256.24")


def test_the_binding_names_the_process() -> None:
    bound = bind_report_data(RD, entry="runtime", measurement=RT.measurement)
    assert len(bound) == 64
    assert bound != bind_report_data(RD, entry="keyservice", measurement=RT.measurement)
    assert bound != bind_report_data(RD, entry="runtime", measurement=KS.measurement)
    assert bound != bind_report_data(bytes(64), entry="runtime", measurement=RT.measurement)


def _evidence(**changes: object) -> LaunchEvidence:
    fields: dict[str, object] = {
        "platform": b"quote",
        "register": "pcr.sha256.23",
        "events": (KS, RT),
        "entry": "runtime",
        "measurement": RT.measurement,
        "report_data": RD,
    }
    fields.update(changes)
    return LaunchEvidence(**fields)  # type: ignore[arg-type]


def test_check_replays_the_log_and_finds_the_process() -> None:
    evidence = LaunchEvidence.from_raw(_evidence().to_raw())
    assert evidence == _evidence()
    register = register_of([KS, RT], "sha256")
    evidence.check(register_value=register, platform_report_data=evidence.bound_report_data)
    with pytest.raises(LaunchLogMismatch, match="replay"):
        evidence.check(
            register_value=register_of([KS], "sha256"),
            platform_report_data=evidence.bound_report_data,
        )
    with pytest.raises(LaunchLogMismatch, match="bind"):
        evidence.check(register_value=register, platform_report_data=bytes(64))
    # a process whose launch is not in the log
    other = LaunchEvent(entry="runtime", measurement=hashlib.sha256(b"other").digest())
    stranger = _evidence(measurement=other.measurement)
    with pytest.raises(LaunchLogMismatch, match="not in the launch log"):
        stranger.check(register_value=register, platform_report_data=stranger.bound_report_data)
    # SNP: the log is the allow list and HOST_DATA its replay's SHA-256
    snp = _evidence(register="host_data")
    snp.check(
        register_value=hashlib.sha256(register_of([KS, RT], "sha256")).digest(),
        platform_report_data=snp.bound_report_data,
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"not canonical",
        _evidence().to_raw() + b"x",
        _evidence().to_raw().replace(b"log.1", b"log.2"),
        _evidence().to_raw().replace(b"log.1", b"logx1"),
    ],
)
def test_malformed_launch_evidence_is_refused(raw: bytes) -> None:
    with pytest.raises(LaunchLogMismatch):
        LaunchEvidence.from_raw(raw)
