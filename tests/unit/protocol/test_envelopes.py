"""The envelopes of one inference bind the purpose, the model, the user and the request."""

from __future__ import annotations

import numpy as np
import pytest

from sealserve.crypto import RequestKey, seal, unseal
from sealserve.errors import InvalidEnvelope
from sealserve.protocol import (
    INPUT_PURPOSE,
    OUTPUT_PURPOSE,
    check_request_id,
    input_context,
    output_context,
    seal_input,
    unseal_output,
)

MODEL = "ab" * 32 + "/resnet"
USER = "cd" * 32


def test_input_and_output_contexts_bind_the_request() -> None:
    ctx = input_context(model_id=MODEL, user_id=USER, request_id="r-1")
    assert ctx == {
        "purpose": INPUT_PURPOSE,
        "model_id": MODEL,
        "user_id": USER,
        "request_id": "r-1",
    }
    assert (
        output_context(model_id=MODEL, user_id=USER, request_id="r-1")["purpose"] == OUTPUT_PURPOSE
    )
    key = RequestKey.generate()
    tensors = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    sealed = seal_input(key, tensors, model_id=MODEL, user_id=USER, request_id="r-1")
    plain = unseal(key.input_key, sealed, context=ctx)
    with pytest.raises(InvalidEnvelope):  # an input never opens as an output
        unseal_output(key, sealed, model_id=MODEL, user_id=USER, request_id="r-1")
    reply = seal(
        key.output_key,
        plain,
        context=output_context(model_id=MODEL, user_id=USER, request_id="r-1"),
    )
    opened = unseal_output(key, reply, model_id=MODEL, user_id=USER, request_id="r-1")
    assert np.array_equal(opened["x"], tensors["x"])
    for bad in ("", "-x", "a b", "x" * 129, "é"):
        with pytest.raises(ValueError, match="request_id"):
            check_request_id(bad)
