"""``sealserve up --tee tpm``: the demo's flow on a real TPM 2.0 (swtpm), issue 12.

The stack starts on the ``tpm`` backend: the platform daemon resets PCR 23 and extends it with
the KeyService's and the runtimes' launches; the KeyService trusts the AK root through its
measured launch config; ``up`` records the TPM's boot PCRs as the reference values (what an
owner does with an image it audited) and pins them in the runtimes' launch config.  Owner and
user pin the KeyService's measurement, the reference values and the AK root; the owner seals a
model into the store and grants the user in that runtime only; the user's sealed inference
through the gateway is answered and equals plain onnxruntime.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealserve.attest import Policy, ReferenceValues, TpmAnchors, TrustAnchors
from sealserve.client import GatewayClient, KeyServicePin, Owner, User, upload_model
from sealserve.crypto import Identity, RequestKey
from sealserve.errors import AccessDenied
from sealserve.instance import ModelStore
from tests.integration.swtpm import Swtpm
from tests.unit.runtime.graphs import dense_model, plain_run

_READY_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def up_tpm(swtpm: Swtpm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("up-tpm")
    ak = swtpm.create_ak("rsassa")
    root, issuer = swtpm.ca_certificates()
    leaf = swtpm.certify_ak(ak, now=int(time.time()))
    (work / "ak-chain.pem").write_bytes(_pem(leaf) + issuer)
    (work / "ak-root.pem").write_bytes(root)
    config = work / "sealserve.toml"
    config.write_text(
        "[attest]\n"
        f'tpm_tcti = "{swtpm.tcti}"\n'
        f'tpm_ak = "{ak.context}"\n'
        f'tpm_ak_chain = "{work / "ak-chain.pem"}"\n'
        'tpm_ak_scheme = "rsassa"\n'
        "[keyservice]\n"
        f'tpm_roots = "{work / "ak-root.pem"}"\n'
    )
    ready = work / "up.json"
    command = [
        sys.executable, "-m", "sealserve", "up", "--tee", "tpm",
        "--config", str(config),
        "--data-dir", str(work / "data"),
        "--keyservice-port", "0", "--gateway-port", "0",
        "--max-instances", "1",
        "--ready-file", str(ready),
        "--log-level", "INFO",
    ]  # fmt: skip
    with (work / "up.log").open("wb") as log:
        up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not ready.exists():  # bounded by the deadline
            if up.poll() is not None or time.monotonic() > deadline:
                tail = (work / "up.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"sealserve up --tee tpm did not start:\n{tail}")
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        info["root"] = root
        yield info
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(90)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(10)


def _pem(certificate: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if certificate.startswith(b"-----BEGIN"):
        return certificate
    return x509.load_der_x509_certificate(certificate).public_bytes(Encoding.PEM)


def test_a_sealed_inference_through_the_gateway_on_a_tpm(
    up_tpm: dict[str, Any], tmp_path: Path
) -> None:
    info = up_tpm
    assert info["backend"] == "tpm"
    assert info["platform_key_file"] == ""
    references = tuple(
        ReferenceValues.from_dict(doc)
        for doc in json.loads(Path(info["reference_values_file"]).read_text())
    )
    trust = TrustAnchors(tpm=TpmAnchors(roots=(info["root"],)))
    pin = KeyServicePin(
        policy=Policy(
            measurements=frozenset({info["keyservice_measurement"]}), reference_values=references
        ),
        trust=trust,
    )
    runtime = Policy(
        measurements=frozenset({info["runtime_measurement"]}), reference_values=references
    )
    onnx = tmp_path / "dense.onnx"
    onnx.write_bytes(dense_model(7))
    inputs = {"X": np.random.default_rng(7).standard_normal((1, 64)).astype(np.float32)}
    url = info["keyservice_url"]
    with (
        Owner(Identity.generate(), keyservice_url=url, pin=pin) as owner,
        User(Identity.generate(), keyservice_url=url, pin=pin) as user,
        User(Identity.generate(), keyservice_url=url, pin=pin) as stranger,
    ):
        owner.register()
        user.register()
        stranger.register()
        receipt = upload_model(owner, ModelStore(info["store_dir"]), "dense", onnx)
        owner.grant("dense", user.principal_id, runtime)
        key = RequestKey.generate()
        user.put_request_key(receipt.model_id, key, runtime)
        with GatewayClient(info["gateway_url"]) as gateway:
            result = gateway.infer(receipt.model_id, inputs, user_id=user.principal_id, key=key)
            np.testing.assert_allclose(
                result.outputs["Y"], plain_run(onnx.read_bytes(), inputs)["Y"], rtol=1e-5
            )
            other_key = RequestKey.generate()
            stranger.put_request_key(receipt.model_id, other_key, runtime)
            with pytest.raises(AccessDenied):  # no grant: the fixed denial
                gateway.infer(
                    receipt.model_id, inputs, user_id=stranger.principal_id, key=other_key
                )
