"""The ``tpm`` launcher backend on a real TPM 2.0 implementation (swtpm)."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attest import SimulatedPlatform
from sealserve.attest._launch_log import LaunchEvent, register_of
from sealserve.attest._tpm_backend import TpmBackend
from sealserve.attest._tpm_device import TpmDevice
from tests.hwfakes.swtpm import PlainSwtpm, swtpm_missing
from tests.integration.attest._probe_io import launch_probe

pytestmark = pytest.mark.skipif(
    swtpm_missing() is not None, reason=f"{swtpm_missing()} is not installed (scripts/ci-deps)"
)


@pytest.fixture
def tpm() -> Iterator[PlainSwtpm]:
    with PlainSwtpm() as swtpm:
        yield swtpm


def test_the_launcher_resets_and_extends_pcr_23(
    tpm: PlainSwtpm, tmp_path: Path, frozen_package: Path
) -> None:
    device = TpmDevice(tcti=tpm.tcti)
    device.extend(23, hashlib.sha256(b"left over from before").digest())
    backend = TpmBackend(device, ak=str(tpm.create_ak()))
    with SimulatedPlatform(
        data_dir=tmp_path / "data", package_dir=frozen_package, backend=backend
    ) as platform:
        assert platform.launch_register == "pcr.sha256.23"
        assert device.read_pcrs([23])[23] == bytes(32)  # reset when the launcher started
        process, doc = launch_probe(platform, os.urandom(64), "--sealing-key")
        assert process.wait(30) == 0
        process.close()
        event = LaunchEvent(entry="attest-probe", measurement=bytes.fromhex(process.measurement))
        assert platform.launch_log() == (event,)
        assert device.read_pcrs([23])[23] == register_of([event], "sha256")
        # the sealing key came from the TPM's PCR-bound root (the probe printed its digest)
        from sealserve.attest._sealing import derive_sealing_key

        expected = derive_sealing_key(
            device.sealing_root(), measurement=process.measurement, purpose="attest-probe",
            debug=False,
        )  # fmt: skip
        assert doc["sealing_key_sha256"] == hashlib.sha256(expected).hexdigest()


def test_quotes_cover_the_boot_pcrs_and_the_launch_pcr(tpm: PlainSwtpm) -> None:
    device = TpmDevice(tcti=tpm.tcti)
    ak = str(tpm.create_ak())
    qualifying = hashlib.sha256(b"report data").digest()
    attest, signature, values = device.quote(
        ak=ak, qualifying_data=qualifying, pcrs=(0, 1, 2, 3, 4, 5, 6, 7, 23)
    )
    # TPMS_ATTEST: magic, type QUOTE, then the qualified signer name and extraData
    magic, kind = struct.unpack(">IH", attest[:6])
    assert (magic, kind) == (0xFF544347, 0x8018)
    (name_len,) = struct.unpack(">H", attest[6:8])
    (extra_len,) = struct.unpack(">H", attest[8 + name_len : 10 + name_len])
    assert attest[10 + name_len : 10 + name_len + extra_len] == qualifying
    assert len(values) == 9 * 32
    assert signature


def test_the_sealing_root_is_bound_to_the_boot_pcrs(tpm: PlainSwtpm) -> None:
    device = TpmDevice(tcti=tpm.tcti)
    root = device.sealing_root()
    assert root == device.sealing_root()
    device.extend(23, hashlib.sha256(b"a launch").digest())
    assert device.sealing_root() == root  # the launch PCR is not a boot PCR
    device.extend(7, hashlib.sha256(b"another boot").digest())
    assert device.sealing_root() != root


def test_azure_nv_interface(tpm: PlainSwtpm) -> None:
    """What azure-cvm asks of the vTPM: write report_data to 0x01400002, read the report at
    0x01400001 (on Azure the paravisor regenerates it; here the NV index is only storage)."""
    from sealserve.attest._tpm_device import AZURE_HCL_REPORT_NV, AZURE_REPORT_DATA_NV

    tpm.tool("tpm2_nvdefine", f"{AZURE_REPORT_DATA_NV:#x}", "-C", "o", "-s", "64", "-a",
             "ownerread|ownerwrite")  # fmt: skip
    tpm.tool("tpm2_nvdefine", f"{AZURE_HCL_REPORT_NV:#x}", "-C", "o", "-s", "128", "-a",
             "ownerread|ownerwrite")  # fmt: skip
    device = TpmDevice(tcti=tpm.tcti)
    device.nv_write(AZURE_REPORT_DATA_NV, bytes(range(64)))
    assert device.nv_read(AZURE_REPORT_DATA_NV) == bytes(range(64))
    device.nv_write(AZURE_HCL_REPORT_NV, b"HCLA" + bytes(124))
    assert device.nv_read(AZURE_HCL_REPORT_NV).startswith(b"HCLA")
