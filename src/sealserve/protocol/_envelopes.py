"""The envelopes of one inference: what the client seals and what the runtime seals back.

Both sides build the same contexts from the same four values, so an envelope opens only for
the request it was made for::

    input:   seal(request_key.input_key,  tensors, context={"purpose": INPUT_PURPOSE,
                  "model_id", "user_id", "request_id"})
    output:  seal(request_key.output_key, tensors, context={"purpose": OUTPUT_PURPOSE,
                  "model_id", "user_id", "request_id"})

The two directions use different subkeys (HKDF of the request key) and different purposes, so
an output can never be passed off as an input, nor as the output of another request, model or
user.  The plaintext is the tensor container of :func:`encode_tensors` (no pickle).

This module is deliberately light (no onnxruntime, no ipc): the client SDK seals with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve.crypto import RequestKey, seal, unseal
from sealserve.protocol._ids import check_request_id
from sealserve.protocol._tensors import decode_tensors, encode_tensors

__all__ = [
    "INPUT_PURPOSE",
    "OUTPUT_PURPOSE",
    "input_context",
    "output_context",
    "seal_input",
    "unseal_output",
]

#: The purpose bound into every sealed inference input.
INPUT_PURPOSE: Final = "sealserve/inference/input"
#: The purpose bound into every sealed inference output.
OUTPUT_PURPOSE: Final = "sealserve/inference/output"


def _context(purpose: str, model_id: str, user_id: str, request_id: str) -> dict[str, str]:
    for name, value in (("model_id", model_id), ("user_id", user_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    check_request_id(request_id)
    return {
        "purpose": purpose,
        "model_id": model_id,
        "user_id": user_id,
        "request_id": request_id,
    }


def input_context(*, model_id: str, user_id: str, request_id: str) -> dict[str, str]:
    """The context bound into the sealed input of one request."""
    return _context(INPUT_PURPOSE, model_id, user_id, request_id)


def output_context(*, model_id: str, user_id: str, request_id: str) -> dict[str, str]:
    """The context bound into the sealed output of one request."""
    return _context(OUTPUT_PURPOSE, model_id, user_id, request_id)


def seal_input(
    key: RequestKey,
    inputs: Mapping[str, npt.NDArray[Any]] | bytes,
    *,
    model_id: str,
    user_id: str,
    request_id: str,
    clock: Clock = SYSTEM_CLOCK,
) -> bytes:
    """The sealed input of one request: named tensors (or their encoding) under the request
    key's input subkey, bound to the model, the user and the request id."""
    if not isinstance(key, RequestKey):
        raise TypeError(f"key must be a RequestKey, got {type(key).__name__}")
    plaintext = inputs if isinstance(inputs, bytes) else encode_tensors(inputs)
    context = input_context(model_id=model_id, user_id=user_id, request_id=request_id)
    return seal(key.input_key, plaintext, context=context, clock=clock)


def unseal_output(
    key: RequestKey,
    envelope: bytes | bytearray | memoryview,
    *,
    model_id: str,
    user_id: str,
    request_id: str,
) -> dict[str, np.ndarray[Any, Any]]:
    """The output tensors of one request, if ``envelope`` is the runtime's answer to exactly
    this request; the fixed :class:`~sealserve.errors.InvalidEnvelope` otherwise."""
    if not isinstance(key, RequestKey):
        raise TypeError(f"key must be a RequestKey, got {type(key).__name__}")
    context = output_context(model_id=model_id, user_id=user_id, request_id=request_id)
    return decode_tensors(unseal(key.output_key, envelope, context=context))
