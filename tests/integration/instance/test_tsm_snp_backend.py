"""The whole release flow and a sealed inference on the ``tsm`` backend (SEV-SNP), issue 12.

The platform daemon is an SEV-SNP VM's measured launcher over the faithful configfs-tsm fake
(tests/hwfakes/configfs_tsm.py), whose reports a test ARK/ASK/VCEK chain generated here signs
(``sealserve.attest._synthetic.SyntheticAmd``), with HOST_DATA committing to the launch log of
the KeyService and the runtime.  The KeyService and the runtime trust that test ARK through
their measured launch configs (``snp_ark_pins``), in this test only; owner and user pin the
KeyService's sealserve measurement and the VM's reference values (SNP MEASUREMENT, TCB).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest

from sealserve.attest import ReferenceValues, SnpAnchors, SnpReference, TrustAnchors
from sealserve.attest._backends import TsmBackend
from sealserve.attest._launch_log import LaunchEvent, register_of
from sealserve.attest._measure import (
    installed_package_dir,
    measure_manifest,
    package_sources,
    source_manifest,
)
from sealserve.attest._synthetic import SyntheticAmd
from sealserve.bench._runtime_stack import LocalStack, infer_tensors
from sealserve.config import KeyServiceSettings
from sealserve.ecall import runtime_launch_config
from sealserve.keyservice import measured_config
from tests.hwfakes.configfs_tsm import FakeTsm
from tests.unit.runtime.graphs import dense_model, plain_run

TCB = {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 210}
CHIP = bytes(range(64))
MEASUREMENT = bytes([0x5A]) * 48


@pytest.fixture(scope="module")
def snp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("snp-stack")
    amd = SyntheticAmd("Milan")
    key, vcek = amd.leaf(tcb=TCB, chip_id=CHIP)
    trust = TrustAnchors(snp=SnpAnchors(ark_pins={"Milan": amd.ark_pin}))
    reference = ReferenceValues(
        snp=SnpReference(min_tcb={"Milan": TCB}, measurements=frozenset({MEASUREMENT.hex()}))
    )
    # The launch log the VM is started for: the KeyService and the runtime, as the stack will
    # launch them (their measured configs carry the test ARK pin and the reference values).
    manifest = source_manifest(package_sources(installed_package_dir()))
    pins = KeyServiceSettings(snp_ark_pins=f"Milan={amd.ark_pin}")
    keyservice = measure_manifest(manifest, entry="keyservice", config=measured_config(pins))
    from sealserve.attest import Policy

    runtime_config = runtime_launch_config(
        keyservice_policy=Policy(
            measurements=frozenset({keyservice}), reference_values=(reference,)
        ),
        trust=trust,
    )
    runtime = measure_manifest(manifest, entry="runtime", config=runtime_config)
    allowed = (
        LaunchEvent(entry="keyservice", measurement=bytes.fromhex(keyservice)),
        LaunchEvent(entry="runtime", measurement=bytes.fromhex(runtime)),
    )
    host_data = hashlib.sha256(register_of(allowed, "sha256")).digest()

    def report(inblob: bytes, _rtmr3: bytes) -> tuple[bytes, bytes | None]:
        signed = amd.report(
            key,
            tcb=TCB,
            report_data=inblob,
            measurement=MEASUREMENT,
            host_data=host_data,
            chip_id=CHIP,
        )
        return signed, amd.cert_table(vcek)

    with FakeTsm(root / "tsm", provider="sev_guest", make_report=report) as fake:
        backend = TsmBackend(
            state_dir=root / "platform" / "tee",
            report_dir=fake.report_dir,
            rtmr3=root / "no-rtmr3",
            sev_guest_device=root / "no-sev-guest",
            allowed=allowed,
            # The fake firmware's SNP_GET_DERIVED_KEY: a chip secret mixed with the launch
            # MEASUREMENT (the ioctl itself needs /dev/sev-guest, which no fake provides).
            derived_key=lambda: hashlib.sha256(b"chip secret" + MEASUREMENT).digest(),
        )
        with LocalStack(
            root, log_level="INFO", backend=backend, trust=trust, reference_values=(reference,)
        ) as stack:
            assert stack.keyservice_measurement == keyservice
            assert stack.runtime_measurement == runtime
            yield stack


def test_keys_are_released_to_the_attested_runtime_and_a_sealed_inference_answered(
    snp_stack: LocalStack,
) -> None:
    stack = snp_stack
    assert stack.platform is not None
    assert stack.platform.launch_register == "host_data"
    assert stack.user is not None
    onnx = dense_model(11)
    model = stack.add_model("dense", onnx)
    inputs = {"X": np.random.default_rng(11).standard_normal((1, 64)).astype(np.float32)}
    with stack.start_instance() as instance:
        outputs, _ = infer_tensors(
            instance.client,
            model.request_key,
            inputs,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )
    np.testing.assert_allclose(outputs["Y"], plain_run(onnx, inputs)["Y"], rtol=1e-5, atol=1e-5)
    assert {e.entry for e in stack.platform.launch_log()} == {"keyservice", "runtime"}
