"""The ``tpm`` launcher backend on a real TPM 2.0 implementation (swtpm), end to end.

The AK is certified by swtpm's local CA after credential activation against the EK whose
certificate that CA issued (tests/integration/swtpm.py); the verifier trusts that CA's root and
nothing else, pins PCRs 0-7 of this TPM as the platform's reference values, and the probe's
sealserve measurement, which it finds in the launch log replayed against PCR 23.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attest import (
    FORMAT_LAUNCH,
    Evidence,
    Policy,
    ReferenceValues,
    TpmAnchors,
    TpmReference,
    TrustAnchors,
    verify_evidence,
)
from sealserve.attest._launch_log import LaunchEvent, LaunchEvidence, register_of
from sealserve.attest._sealing import derive_sealing_key
from sealserve.attest._tpm_backend import TpmBackend
from sealserve.attest._tpm_device import (
    AZURE_HCL_REPORT_NV,
    AZURE_REPORT_DATA_NV,
    TpmDevice,
)
from sealserve.attest.tee import SimulatedPlatform
from sealserve.errors import AttestationError
from tests.integration.attest._probe_io import evidence_of, launch_probe
from tests.integration.swtpm import Swtpm


@pytest.fixture
def tpm_platform(
    swtpm: Swtpm, tmp_path: Path, frozen_package: Path
) -> Iterator[tuple[SimulatedPlatform, TpmDevice, TrustAnchors]]:
    ak = swtpm.create_ak("rsassa")
    root, issuer = swtpm.ca_certificates()
    chain = (swtpm.certify_ak(ak, now=int(time.time())), issuer)
    device = TpmDevice(tcti=swtpm.tcti)
    device.extend(23, hashlib.sha256(b"left over from before the launcher").digest())
    backend = TpmBackend(device, ak=str(ak.context), ak_chain=chain, scheme=ak.scheme)
    with SimulatedPlatform(
        data_dir=tmp_path / "data", package_dir=frozen_package, backend=backend
    ) as platform:
        yield platform, device, TrustAnchors(tpm=TpmAnchors(roots=(root,)))


def _reference(device: TpmDevice) -> ReferenceValues:
    boot = device.read_pcrs(range(8))
    return ReferenceValues(tpm=TpmReference(pcrs={i: {boot[i].hex()} for i in range(8)}))


def test_the_launch_is_in_pcr_23_and_the_quote_verifies(
    tpm_platform: tuple[SimulatedPlatform, TpmDevice, TrustAnchors],
) -> None:
    platform, device, trust = tpm_platform
    assert platform.launch_register == "pcr.sha256.23"
    report_data = os.urandom(64)
    process, doc = launch_probe(platform, report_data, "--sealing-key")
    assert process.wait(30) == 0
    process.close()
    measurement = process.measurement
    event = LaunchEvent(entry="attest-probe", measurement=bytes.fromhex(measurement))
    # PCR 23 was reset when the launcher started, then extended with the probe's launch
    assert platform.launch_log() == (event,)
    assert device.read_pcrs([23])[23] == register_of([event], "sha256")

    evidence = evidence_of(doc)
    assert evidence.format == FORMAT_LAUNCH
    policy = Policy(measurements=frozenset({measurement}), reference_values=(_reference(device),))
    now = time.time()
    claims = verify_evidence(evidence, policy, report_data=report_data, trust=trust, now=now)
    assert claims.entry == "attest-probe"
    assert claims.measurement == measurement
    assert claims.platform_format == "tpm-quote"

    # The same evidence under policies that must refuse it: another measurement; no
    # reference values; another TPM root; another report_data.
    refusals = [
        (dataclasses.replace(policy, measurements=frozenset({"ab" * 32})), trust, report_data),
        (Policy(reference_values=(_reference(device),)), trust, report_data),
        (policy, TrustAnchors(), report_data),
        (policy, trust, os.urandom(64)),
    ]
    for refused_policy, refused_trust, rd in refusals:
        with pytest.raises(AttestationError):
            verify_evidence(evidence, refused_policy, report_data=rd, trust=refused_trust, now=now)

    # A host that edits the launch log (claims the probe is the KeyService, or drops an
    # event): the log no longer replays to the quoted PCR 23, or the binding fails.
    launch = LaunchEvidence.from_raw(evidence.raw)
    forged_entry = dataclasses.replace(
        launch,
        entry="keyservice",
        events=(LaunchEvent(entry="keyservice", measurement=event.measurement),),
    )
    dropped = dataclasses.replace(launch, events=())
    for forged in (forged_entry, dropped):
        tampered = Evidence.from_bytes(
            Evidence(
                format=FORMAT_LAUNCH,
                measurement=forged.measurement,
                report_data=forged.report_data,
                raw=forged.to_raw(),
                debug=False,
            ).to_bytes()
        )
        with pytest.raises(AttestationError):
            verify_evidence(tampered, policy, report_data=report_data, trust=trust, now=now)

    # The sealing key came from the TPM's PCR-bound root (the probe printed its digest).
    expected = derive_sealing_key(
        device.sealing_root(), measurement=measurement, purpose="attest-probe", debug=False
    )
    assert doc["sealing_key_sha256"] == hashlib.sha256(expected).hexdigest()


def test_the_sealing_root_is_bound_to_the_boot_pcrs() -> None:
    with Swtpm() as fresh:
        device = TpmDevice(tcti=fresh.tcti)
        root = device.sealing_root()
        assert root == device.sealing_root()
        device.extend(23, hashlib.sha256(b"a launch").digest())
        assert device.sealing_root() == root  # the launch PCR is not a boot PCR
        device.extend(7, hashlib.sha256(b"another boot").digest())
        assert device.sealing_root() != root


def test_the_azure_nv_interface(swtpm: Swtpm) -> None:
    """What azure-cvm asks of the vTPM: write report_data to 0x01400002, read the report at
    0x01400001 (on Azure the paravisor regenerates it; on swtpm the NV index only stores)."""
    for index, size in ((AZURE_REPORT_DATA_NV, 64), (AZURE_HCL_REPORT_NV, 128)):
        swtpm.tool("tpm2_nvdefine", f"{index:#x}", "-C", "o", "-s", str(size), "-a",
                   "ownerread|ownerwrite")  # fmt: skip
    device = TpmDevice(tcti=swtpm.tcti)
    device.nv_write(AZURE_REPORT_DATA_NV, bytes(range(64)))
    assert device.nv_read(AZURE_REPORT_DATA_NV) == bytes(range(64))
    device.nv_write(AZURE_HCL_REPORT_NV, b"HCLA" + bytes(124))
    assert device.nv_read(AZURE_HCL_REPORT_NV).startswith(b"HCLA")
