"""configfs-tsm against a faithful fake of the kernel interface (tests/hwfakes/configfs_tsm.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import dcap_qvl
import pytest

from sealserve.attest._backends import TsmBackend, open_backend
from sealserve.attest._launch_log import LaunchEvent, register_of
from sealserve.attest._tsm import TsmReports
from sealserve.config import AttestSettings
from sealserve.errors import TeeError
from tests.hwfakes.configfs_tsm import FakeTsm, is_fifo

RD = bytes(range(64))


@pytest.fixture
def tsm(tmp_path: Path) -> Iterator[FakeTsm]:
    with FakeTsm(tmp_path / "tsm") as fake:
        yield fake


def _report_data_of(quote: bytes) -> bytes:
    return bytes(dcap_qvl.parse_quote(quote).report.report_data)


def test_the_outblob_is_bound_to_the_inblob_just_written(tsm: FakeTsm) -> None:
    with TsmReports(report_dir=tsm.report_dir) as reports:
        assert reports.provider == "tdx_guest"
        (entry,) = [p.name for p in tsm.report_dir.iterdir()]
        assert is_fifo(tsm.report_dir / entry / "outblob")
        first, aux = reports.report(RD)
        assert aux is None
        assert _report_data_of(first) == RD
        second, _ = reports.report(bytes(64))
        assert _report_data_of(second) == bytes(64)
        assert (tsm.report_dir / entry / "generation").read_text().strip() == "2"
    assert tsm.outblob_reads == 2


def test_a_second_writer_is_detected_and_the_attempt_retried(tsm: FakeTsm) -> None:
    with TsmReports(report_dir=tsm.report_dir) as reports:
        tsm.interfere = 1  # another writer, between our inblob and our outblob
        quote, _ = reports.report(RD)
        # the first outblob was the other writer's (the kernel's behaviour): it was not
        # returned; the retry's is ours
        assert _report_data_of(quote) == RD
        assert tsm.outblob_reads == 2


def test_a_writer_that_never_stops_fails_the_report(tsm: FakeTsm) -> None:
    with TsmReports(report_dir=tsm.report_dir, attempts=3) as reports:
        tsm.interfere = 1
        tsm.interfere_always = True
        with pytest.raises(TeeError, match="another writer kept using"):
            reports.report(RD)
        assert tsm.outblob_reads == 3


def test_no_interface_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TeeError, match="no configfs-tsm report interface"):
        TsmReports(report_dir=tmp_path / "absent").open()
    with pytest.raises(ValueError, match="inblob"):
        TsmReports(report_dir=tmp_path).report(bytes(65))


def _backend(tsm: FakeTsm, state: Path) -> TsmBackend:
    return TsmBackend(
        state_dir=state,
        report_dir=tsm.report_dir,
        rtmr3=tsm.rtmr3_path,
        sev_guest_device=state / "no-sev-guest",
        collateral=b"{}",
    )


def test_the_tdx_launcher_extends_rtmr3_and_keeps_its_log(tsm: FakeTsm, tmp_path: Path) -> None:
    state = tmp_path / "state"
    events = [
        LaunchEvent(entry="keyservice", measurement=hashlib.sha256(b"ks").digest()),
        LaunchEvent(entry="runtime", measurement=hashlib.sha256(b"rt").digest()),
    ]
    backend = _backend(tsm, state)
    assert backend.open() == []
    assert backend.register == "rtmr3"
    for event in events:
        backend.extend(event)
    evidence = backend.evidence(RD)
    assert evidence.format == "tdx-dcap"
    assert evidence.report_data == RD
    # the quote carries RTMR3 = the replay of the log
    assert bytes(dcap_qvl.parse_quote(evidence.raw).report.rt_mr3) == register_of(events, "sha384")
    assert tsm.rtmr3 == register_of(events, "sha384")
    backend.close()
    logged = json.loads((state / "launch-log.json").read_text())["events"]
    assert [e["entry"] for e in logged] == ["keyservice", "runtime"]

    # a restarted launcher resumes the log RTMR3 holds
    again = _backend(tsm, state)
    assert again.open() == events
    again.close()

    # RTMR3 extended behind the launcher's back: the log no longer replays, refuse
    fd = os.open(tsm.rtmr3_path, os.O_WRONLY)
    os.write(fd, hashlib.sha384(b"something else").digest())
    os.close(fd)
    with pytest.raises(TeeError, match="does not replay"):
        _backend(tsm, state).open()

    # a new boot (RTMR3 back to zeros): the old log is dropped
    tsm.rtmr3 = bytes(48)
    fresh = _backend(tsm, state)
    assert fresh.open() == []
    fresh.close()
    assert json.loads((state / "launch-log.json").read_text())["events"] == []


def test_tdx_has_no_sealing_root_and_needs_collateral(tsm: FakeTsm, tmp_path: Path) -> None:
    backend = TsmBackend(
        state_dir=tmp_path,
        report_dir=tsm.report_dir,
        rtmr3=tsm.rtmr3_path,
        sev_guest_device=tmp_path / "none",
    )
    backend.open()
    try:
        with pytest.raises(TeeError, match="TDX has no sealing key"):
            backend.sealing_root()
        with pytest.raises(TeeError, match="collateral"):
            backend.evidence(RD)
    finally:
        backend.close()


def test_auto_never_falls_back_silently(tmp_path: Path) -> None:
    nothing = AttestSettings(
        backend="auto",
        tsm_report_dir=str(tmp_path / "no-tsm"),
        gramine_dir=str(tmp_path / "no-gramine"),
    )
    if Path("/dev/tpmrm0").exists():
        pytest.skip("this machine has a TPM")
    with pytest.raises(TeeError, match="Refusing to start on the simulated platform"):
        open_backend(nothing, data_dir=tmp_path)
    allowed = AttestSettings(
        backend="auto",
        allow_simulated=True,
        tsm_report_dir=str(tmp_path / "no-tsm"),
        gramine_dir=str(tmp_path / "no-gramine"),
    )
    assert open_backend(allowed, data_dir=tmp_path) is None
    assert open_backend(AttestSettings(backend="simulated"), data_dir=tmp_path) is None
    with pytest.raises(TeeError, match="gramine backend has no launcher"):
        open_backend(AttestSettings(backend="gramine"), data_dir=tmp_path)


def test_auto_picks_the_tsm_interface_present(tsm: FakeTsm, tmp_path: Path) -> None:
    settings = AttestSettings(
        backend="auto",
        tsm_report_dir=str(tsm.report_dir),
        tdx_rtmr3=str(tsm.rtmr3_path),
        dcap_collateral="",
    )
    backend = open_backend(settings, data_dir=tmp_path)
    assert isinstance(backend, TsmBackend)
