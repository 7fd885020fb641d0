"""Errors on the host's HTTP surface: a stable code, a message with no secret, ``retryable``.

Every error response is ``{"error": {"code", "message", "retryable"}}`` (the OpenWhisk action
contract wants an ``error`` field on failure; its value may be any JSON).  Retryable failures
answer 503 with ``Retry-After``; the others keep the status that says what went wrong.

=============================  ======  ==========  ==========================================
code                           status  retryable   when
=============================  ======  ==========  ==========================================
``bad_request``                400     no          a missing or malformed header, field or id
``invalid_envelope``           400     no          the sealed input does not open (wrong key,
                                                   tampered, made for another request): the
                                                   fixed message, nothing more
``access_denied``              403     no          the KeyService released no keys (no grant,
                                                   no request key, policy not satisfied)
``already_initialized``        403     no          a second ``POST /init``
``model_not_available``        404     no          not in the store, damaged, or not loadable
``not_initialized``            409     no          ``POST /run`` before ``POST /init``
``length_required``            411     no          ``/v1/infer`` without Content-Length
``payload_too_large``          413     no          over the body limit
``keyservice_error``           502     no          the KeyService answered what the runtime
                                                   cannot use (or failed its attestation)
``memory_budget_exceeded``     507     no          the model is larger than the whole budget
``deadline_exceeded``          503     yes         the request's deadline passed
``runtime_unavailable``        503     yes         the runtime crashed or is (re)starting
``overloaded``                 503     yes         the instance serves its maximum at once
``keyservice_unavailable``     503     yes         the KeyService is unreachable or limiting
``internal``                   500     no          a bug; the log has the exception type
=============================  ======  ==========  ==========================================
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

from sealserve.errors import (
    AccessDenied,
    AttestationError,
    DeadlineExceeded,
    InvalidEnvelope,
    KeyServiceError,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    ModelNotStored,
    RuntimeUnavailable,
    SealserveError,
    StoreIntegrityError,
)

__all__ = ["RETRY_AFTER_S", "HostError", "error_body", "error_for_exception"]

#: What ``Retry-After`` says on a retryable failure.
RETRY_AFTER_S: Final = 1


@dataclasses.dataclass(frozen=True, slots=True)
class HostError(Exception):
    """An error answer of the host: HTTP status, stable code, message, retryable."""

    status: int
    code: str
    message: str
    retryable: bool = False

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(RETRY_AFTER_S)} if self.retryable else {}


def bad_request(message: str) -> HostError:
    return HostError(400, "bad_request", message)


def error_for_exception(exc: BaseException) -> HostError:
    """The answer for ``exc`` (see the module table); unknown exceptions are ``internal``."""
    if isinstance(exc, HostError):
        return exc
    if isinstance(exc, InvalidEnvelope):
        return HostError(400, "invalid_envelope", InvalidEnvelope.MESSAGE)
    if isinstance(exc, AccessDenied):
        return HostError(403, "access_denied", AccessDenied.MESSAGE)
    if isinstance(exc, DeadlineExceeded):
        return HostError(503, "deadline_exceeded", str(exc), retryable=True)
    if isinstance(exc, RuntimeUnavailable):
        return HostError(503, "runtime_unavailable", str(exc), retryable=True)
    if isinstance(exc, ModelNotAvailable | ModelNotStored | StoreIntegrityError):
        return HostError(404, "model_not_available", str(exc))
    if isinstance(exc, MemoryBudgetExceeded):
        return HostError(507, "memory_budget_exceeded", str(exc))
    if isinstance(exc, AttestationError):
        return HostError(502, "keyservice_error", "the KeyService's attestation did not verify")
    if isinstance(exc, KeyServiceError) and exc.retryable:
        return HostError(503, "keyservice_unavailable", str(exc), retryable=True)
    if isinstance(exc, KeyServiceError):
        return HostError(502, "keyservice_error", str(exc))
    if isinstance(exc, ValueError) and not isinstance(exc, SealserveError):
        return bad_request(str(exc))
    if isinstance(exc, SealserveError) and exc.retryable:
        return HostError(503, "runtime_unavailable", str(exc), retryable=True)
    return HostError(500, "internal", f"internal error ({type(exc).__name__})")


def error_body(error: HostError) -> bytes:
    doc: dict[str, Any] = {
        "error": {"code": error.code, "message": error.message, "retryable": error.retryable}
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")
