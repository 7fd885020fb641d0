"""The runtime connects to a named Unix socket given at launch instead of an inherited one.

A launcher that cannot pass descriptors (a Gramine enclave inherits none) gets the host's
ipc offer on a named socket: here the simulated platform, with ``--named-sockets`` forcing
that path, serves a sealed inference through it exactly as through a passed descriptor.
"""

from __future__ import annotations

import numpy as np

from sealserve.bench._runtime_stack import LocalStack, infer_tensors
from tests.unit.runtime.graphs import dense_model, plain_run


def test_a_sealed_inference_through_a_named_ipc_socket(stack: LocalStack) -> None:
    assert stack.user is not None
    onnx = dense_model(5)
    model = stack.add_model("dense-named", onnx)
    inputs = {"X": np.random.default_rng(5).standard_normal((1, 64)).astype(np.float32)}
    with stack.start_instance(extra=["--named-sockets"]) as instance:
        outputs, _ = infer_tensors(
            instance.client,
            model.request_key,
            inputs,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )
        log = instance.logs()
    np.testing.assert_allclose(outputs["Y"], plain_run(onnx, inputs)["Y"], rtol=1e-5, atol=1e-5)
    # the runtime connected to the named socket (the host passed it no descriptor)
    assert '"event":"supervisor.runtime_connected"' in log
    assert '"via":"named"' in log
