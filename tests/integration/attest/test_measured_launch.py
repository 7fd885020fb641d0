"""The measured launch on a confidential VM's launcher, against the faithful configfs-tsm fake.

The platform runs on the ``tsm`` backend (TDX provider): before an entry's first launch it
extends RTMR3 with the entry's launch event; a launched process's evidence is the TD's quote,
whose report_data binds the process's report_data, entry and measurement, wrapped with the
launch log, which replays to the quote's RTMR3.  The fake's quotes are unsigned (a TDX quote
signed by a test chain would need a whole test PCK hierarchy and collateral for dcap-qvl), so
this checks the launcher and the binding, not Intel's signature; the verifier side runs on the
SEV-SNP provider and the TPM backends, whose evidence a test chain signs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dcap_qvl
import pytest

from sealserve.attest import FORMAT_LAUNCH, Evidence, SimulatedPlatform
from sealserve.attest._backends import TsmBackend
from sealserve.attest._launch_log import LaunchEvent, LaunchEvidence, register_of
from sealserve.errors import TeeError
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
