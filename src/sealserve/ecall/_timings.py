"""Stage timings: where the time of a request and of a cold start goes.

Every stage has one name, used alike in the runtime's replies, the host's ``Server-Timing``
header and ``timings`` objects, its Prometheus series and the benchmark's JSON:

=========================  =========================================================
``sandbox_start``          the instance host process: from its start to ready to launch
``runtime_start``          launch of the runtime through the TEE platform until it answers
``attestation_key_release`` attest the KeyService, challenge, evidence, key release (or
                           the wait for one under way); absent when the keys were cached
``model_fetch``            the sealed model from the store into shared memory
``model_unseal_session``   unseal the model and build its onnxruntime session
``model_wait``             waiting for a load of the model that another request started
``input_unseal``           unseal the input and decode its tensors
``inference``              onnxruntime
``output_seal``            encode the output tensors and seal them into shared memory
``runtime``                everything the runtime did for the request (sum of the above)
``request_body``           the host reading the sealed input off the connection
``total``                  the host's view: request received to response ready
=========================  =========================================================

Times are milliseconds, rounded to microseconds; a stage that did not happen is absent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

__all__ = [
    "ATTESTATION_KEY_RELEASE",
    "COLD_START_STAGES",
    "INFERENCE",
    "INPUT_UNSEAL",
    "MODEL_FETCH",
    "MODEL_UNSEAL_SESSION",
    "MODEL_WAIT",
    "OUTPUT_SEAL",
    "REQUEST_BODY",
    "REQUEST_STAGES",
    "RUNTIME",
    "RUNTIME_START",
    "SANDBOX_START",
    "STAGES",
    "TOTAL",
    "StageTimer",
]

SANDBOX_START: Final = "sandbox_start"
RUNTIME_START: Final = "runtime_start"
ATTESTATION_KEY_RELEASE: Final = "attestation_key_release"
MODEL_FETCH: Final = "model_fetch"
MODEL_UNSEAL_SESSION: Final = "model_unseal_session"
MODEL_WAIT: Final = "model_wait"
INPUT_UNSEAL: Final = "input_unseal"
INFERENCE: Final = "inference"
OUTPUT_SEAL: Final = "output_seal"
RUNTIME: Final = "runtime"
REQUEST_BODY: Final = "request_body"
TOTAL: Final = "total"

#: The stages of a cold start, in order: a new instance serving its first request.
COLD_START_STAGES: Final = (
    SANDBOX_START,
    RUNTIME_START,
    ATTESTATION_KEY_RELEASE,
    MODEL_FETCH,
    MODEL_UNSEAL_SESSION,
    INPUT_UNSEAL,
    INFERENCE,
    OUTPUT_SEAL,
)
#: The stages the runtime reports for a request.
REQUEST_STAGES: Final = (
    ATTESTATION_KEY_RELEASE,
    MODEL_FETCH,
    MODEL_UNSEAL_SESSION,
    MODEL_WAIT,
    INPUT_UNSEAL,
    INFERENCE,
    OUTPUT_SEAL,
)
#: Every stage name.
STAGES: Final = (SANDBOX_START, RUNTIME_START, *REQUEST_STAGES, RUNTIME, REQUEST_BODY, TOTAL)


class StageTimer:
    """Accumulates stage durations (ms); ``with timer.stage(INFERENCE): ...``."""

    __slots__ = ("_ms",)

    def __init__(self) -> None:
        self._ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
        self._ms[name] = self._ms.get(name, 0.0) + seconds * 1000.0

    def to_dict(self) -> dict[str, float]:
        return {name: round(ms, 3) for name, ms in self._ms.items()}
