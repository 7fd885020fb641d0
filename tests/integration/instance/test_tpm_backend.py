"""The whole release flow and a sealed inference on a real TPM 2.0 (swtpm), issue 12.

The platform daemon is the measured launcher on the ``tpm`` backend: an AK certified by
swtpm's local CA after credential activation against the EK, PCR 23 reset at its start and
extended with every entry it launches.  The KeyService is launched through it and trusts the
local CA's root through its measured launch config; owner and user pin the KeyService's
sealserve measurement and this TPM's PCRs 0-7; the runtime pins the same.  The KeyService
verifies the runtime's quote (replaying the launch log against PCR 23) and releases the keys;
a sealed inference is answered.  A grant for a runtime whose code snapshot differs gets the
fixed denial.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sealserve.attest import ReferenceValues, TpmAnchors, TpmReference, TrustAnchors
from sealserve.attest._measure import (
    installed_package_dir,
    measure_manifest,
    package_sources,
    source_manifest,
)
from sealserve.attest._tpm_backend import TpmBackend
from sealserve.attest._tpm_device import TpmDevice
from sealserve.bench._runtime_stack import LocalStack, infer_tensors
from sealserve.errors import AccessDenied
from sealserve.models import get_spec
from tests.integration.swtpm import Swtpm
from tests.unit.runtime.graphs import dense_model, plain_run


@pytest.fixture(scope="module")
def tpm_stack(swtpm: Swtpm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    ak = swtpm.create_ak("rsassa")
    root, issuer = swtpm.ca_certificates()
    chain = (swtpm.certify_ak(ak, now=int(time.time())), issuer)
    device = TpmDevice(tcti=swtpm.tcti)
    boot = device.read_pcrs(range(8))
    reference = ReferenceValues(tpm=TpmReference(pcrs={i: {boot[i].hex()} for i in range(8)}))
    backend = TpmBackend(device, ak=str(ak.context), ak_chain=chain, scheme=ak.scheme)
    with LocalStack(
        tmp_path_factory.mktemp("tpm-stack"),
        log_level="INFO",
        backend=backend,
        trust=TrustAnchors(tpm=TpmAnchors(roots=(root,))),
        reference_values=(reference,),
    ) as stack:
        yield stack


def test_keys_are_released_to_the_attested_runtime_and_a_sealed_inference_answered(
    tpm_stack: LocalStack, mobilenet: Path
) -> None:
    stack = tpm_stack
    assert stack.platform is not None
    assert stack.platform.backend_name == "tpm"
    assert stack.user is not None
    model = stack.add_model("mobilenet", mobilenet)
    inputs = get_spec("mobilenet-v2").example_inputs(1)
    with stack.start_instance() as instance:
        outputs, _ = infer_tensors(
            instance.client,
            model.request_key,
            inputs,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )
    expected = plain_run(mobilenet.read_bytes(), inputs)["logits"]
    assert np.allclose(outputs["logits"], expected, rtol=1e-6, atol=1e-6)
    # the launcher measured both the KeyService and the runtime into PCR 23
    launched = {event.entry for event in stack.platform.launch_log()}
    assert launched == {"keyservice", "runtime"}


def test_a_runtime_whose_snapshot_differs_gets_the_fixed_denial(
    tpm_stack: LocalStack, tmp_path: Path
) -> None:
    """The owner granted the runtime of another code snapshot (one file changed): the runtime
    this launcher runs attests with its own measurement, which the grant does not name."""
    stack = tpm_stack
    assert stack.platform is not None
    assert stack.user is not None
    sources = package_sources(installed_package_dir())
    changed = [
        (path, data + b"\n# another build\n" if path.endswith("runtime/_main.py") else data)
        for path, data in sources
    ]
    other = measure_manifest(source_manifest(changed), entry="runtime", config=stack.runtime_config)
    assert other != stack.runtime_measurement
    dense = {"X": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    model = stack.add_model("dense", dense_model(64), runtime_policy=stack.policy_for(other))
    with stack.start_instance() as instance, pytest.raises(AccessDenied):
        infer_tensors(
            instance.client,
            model.request_key,
            dense,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )
