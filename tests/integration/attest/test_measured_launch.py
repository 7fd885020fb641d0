"""The measured launch on a confidential VM's launcher, against the faithful configfs-tsm fake.

The platform runs on the ``tsm`` backend (TDX provider): before an entry's first launch it
extends RTMR3 with the entry's launch event; a launched process's evidence is the TD's quote,
whose report_data binds the process's report_data, entry and measurement, wrapped with the
launch log, which replays to the quote's RTMR3.  The fake's TDX quotes are unsigned (a TDX quote
signed by a test chain would need a whole test PCK hierarchy and collateral for dcap-qvl), so
the TDX tests check the launcher and the binding, not Intel's signature.  The SEV-SNP provider
runs end to end: the fake's reports are signed by a test ARK/ASK/VCEK chain generated here,
and the verifier trusts that chain in these tests only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dcap_qvl
import pytest

from sealserve.attest import (
    FORMAT_LAUNCH,
    Evidence,
    Policy,
    ReferenceValues,
    SnpReference,
    TrustAnchors,
    verify_evidence,
)
from sealserve.attest._backends import TsmBackend
from sealserve.attest._launch_log import LaunchEvent, LaunchEvidence, register_of
from sealserve.attest._synthetic import SyntheticAmd
from sealserve.attest.tee import SimulatedPlatform
from sealserve.errors import AttestationError, TeeError
from tests.hwfakes.configfs_tsm import FakeTsm
from tests.integration.attest._probe_io import evidence_of, launch_probe


@pytest.fixture
def tdx(tmp_path: Path, frozen_package: Path) -> Iterator[tuple[SimulatedPlatform, FakeTsm]]:
    with FakeTsm(tmp_path / "tsm") as fake:
        backend = TsmBackend(
            state_dir=tmp_path / "data" / "tee",
            report_dir=fake.report_dir,
            rtmr3=fake.rtmr3_path,
            sev_guest_device=tmp_path / "no-sev-guest",
            collateral=b"{}",
        )
        with SimulatedPlatform(
            data_dir=tmp_path / "data", package_dir=frozen_package, backend=backend
        ) as platform:
            yield platform, fake


def test_a_launch_is_extended_into_rtmr3_and_its_evidence_binds_the_process(
    tdx: tuple[SimulatedPlatform, FakeTsm],
) -> None:
    platform, fake = tdx
    assert platform.backend_name == "tsm"
    assert platform.launch_register == "rtmr3"
    report_data = os.urandom(64)
    process, doc = launch_probe(platform, report_data)
    assert process.wait(30) == 0
    process.close()
    evidence = evidence_of(doc)
    assert evidence.format == FORMAT_LAUNCH
    assert evidence.report_data == report_data
    expected = LaunchEvent(entry="attest-probe", measurement=bytes.fromhex(process.measurement))
    assert platform.launch_log() == (expected,)
    assert fake.rtmr3 == register_of([expected], "sha384")

    launch = LaunchEvidence.from_raw(evidence.raw)
    assert launch.register == "rtmr3"
    assert launch.events == (expected,)
    quote = dcap_qvl.parse_quote(Evidence.from_bytes(launch.platform).raw).report
    # the launch log replays to the quote's RTMR3, and the quote's report_data names the
    # probe: the verifier's checks, on the fake's (unsigned) quote
    launch.check(register_value=bytes(quote.rt_mr3), platform_report_data=bytes(quote.report_data))

    # a second launch of the same code adds nothing to the log; other code does
    again, _ = launch_probe(platform, report_data)
    again.wait(30)
    again.close()
    assert platform.launch_log() == (expected,)
    other, _ = launch_probe(platform, report_data, config={"x": "1"})
    other.wait(30)
    other.close()
    assert len(platform.launch_log()) == 2
    assert fake.rtmr3 == register_of(list(platform.launch_log()), "sha384")


def test_tdx_refuses_sealing_keys_and_debug_launches(
    tdx: tuple[SimulatedPlatform, FakeTsm],
) -> None:
    platform, _ = tdx
    with pytest.raises(TeeError, match="debug launches exist only"):
        platform.launch("attest-probe", args=["00" * 64], debug=True)
    read_end, write_end = os.pipe()
    try:
        process = platform.launch(
            "attest-probe", args=["00" * 64, "--sealing-key"], stdout=write_end
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as out:
        printed = out.read()
    # the probe asked for a sealing key, which a TDX launcher has none of: it failed
    assert process.wait(30) != 0
    process.close()
    assert printed == b""
    with pytest.raises(TeeError, match="no simulated key"):
        _ = platform.public_key_bytes


# -- SEV-SNP: the launch log fixed at VM launch in HOST_DATA, reports signed by a test chain --

SNP_TCB = {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 210}
SNP_CHIP = bytes(range(64))
SNP_MEASUREMENT = bytes([0x5A]) * 48


def _snp_platform(
    tmp_path: Path, frozen_package: Path, allowed: tuple[LaunchEvent, ...], amd: SyntheticAmd
) -> tuple[FakeTsm, TsmBackend]:
    key, vcek = amd.leaf(tcb=SNP_TCB, chip_id=SNP_CHIP)
    host_data = hashlib.sha256(register_of(allowed, "sha256")).digest()

    def report(inblob: bytes, _rtmr3: bytes) -> tuple[bytes, bytes | None]:
        signed = amd.report(
            key,
            tcb=SNP_TCB,
            report_data=inblob,
            measurement=SNP_MEASUREMENT,
            host_data=host_data,
            chip_id=SNP_CHIP,
        )
        return signed, amd.cert_table(vcek)

    fake = FakeTsm(tmp_path / "snp", provider="sev_guest", make_report=report)
    backend = TsmBackend(
        state_dir=tmp_path / "data" / "tee",
        report_dir=fake.report_dir,
        rtmr3=tmp_path / "no-rtmr3",
        sev_guest_device=tmp_path / "no-sev-guest",
        allowed=allowed,
    )
    return fake, backend


def test_snp_evidence_of_a_launched_process_verifies_end_to_end(
    tmp_path: Path, frozen_package: Path
) -> None:
    amd = SyntheticAmd("Milan")
    probe = measure_with(frozen_package, "attest-probe")
    allowed = (LaunchEvent(entry="attest-probe", measurement=bytes.fromhex(probe)),)
    fake, backend = _snp_platform(tmp_path, frozen_package, allowed, amd)
    report_data = os.urandom(64)
    with (
        fake,
        SimulatedPlatform(
            data_dir=tmp_path / "data", package_dir=frozen_package, backend=backend
        ) as platform,
    ):
        assert platform.launch_register == "host_data"
        process, doc = launch_probe(platform, report_data)
        assert process.wait(30) == 0
        process.close()
        assert process.measurement == probe
        # code that is not in the launch log fixed at VM launch is not launched at all
        with pytest.raises(TeeError, match="not in the launch log"):
            platform.launch("attest-probe", args=["00" * 64], config={"x": "1"})
    evidence = evidence_of(doc)
    reference = ReferenceValues(
        snp=SnpReference(
            min_tcb={"Milan": SNP_TCB},
            measurements=frozenset({SNP_MEASUREMENT.hex()}),
            host_data=frozenset({hashlib.sha256(register_of(allowed, "sha256")).hexdigest()}),
        )
    )
    policy = Policy(measurements=frozenset({probe}), reference_values=(reference,))
    trust = TrustAnchors(snp=amd.anchors())
    now = time.time()
    claims = verify_evidence(evidence, policy, report_data=report_data, trust=trust, now=now)
    assert (claims.entry, claims.platform_format) == ("attest-probe", "sev-snp")
    # AMD's real roots (the default) do not know the test chain
    with pytest.raises(AttestationError):
        verify_evidence(evidence, policy, report_data=report_data, trust=TrustAnchors(), now=now)
    other = dataclasses.replace(policy, measurements=frozenset({"cd" * 32}))
    with pytest.raises(AttestationError):
        verify_evidence(evidence, other, report_data=report_data, trust=trust, now=now)


def test_an_snp_vm_started_for_other_code_refuses_to_launch(
    tmp_path: Path, frozen_package: Path
) -> None:
    amd = SyntheticAmd("Milan")
    wanted = (LaunchEvent(entry="keyservice", measurement=bytes(32)),)
    fake, backend = _snp_platform(tmp_path, frozen_package, wanted, amd)
    # the launcher is configured with another log than the one HOST_DATA commits to
    configured = (LaunchEvent(entry="runtime", measurement=bytes(32)),)
    backend._allowed = configured
    with fake, pytest.raises(TeeError, match="HOST_DATA"):
        SimulatedPlatform(
            data_dir=tmp_path / "data", package_dir=frozen_package, backend=backend
        ).open()


def measure_with(package: Path, entry: str) -> str:
    from sealserve.attest._measure import measure_manifest, package_sources, source_manifest

    return measure_manifest(source_manifest(package_sources(package)), entry=entry, config={})
