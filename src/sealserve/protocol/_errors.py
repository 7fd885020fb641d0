"""Error answers on the HTTP surfaces: a stable code, a message with no secret, ``retryable``.

Every error response of the instance host and of the gateway is
``{"error": {"code", "message", "retryable"}}`` (the OpenWhisk action contract wants an
``error`` field on failure; its value may be any JSON).  Retryable failures
answer 503 with ``Retry-After``; the others keep the status that says what went wrong.
:func:`error_for_exception` makes the host's answer for an exception, :func:`raise_for_error`
turns it back into the exception on the client's side.  The host's codes:

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

The gateway relays these unchanged and adds its own (``sealserve.gateway`` makes them,
:func:`exception_for_answer` reads them back):

=============================  ======  ==========  ==========================================
code                           status  retryable   when
=============================  ======  ==========  ==========================================
``unknown_model``              404     no          no such model in the store
``too_many_requests``          429     yes         the gateway holds ``max_queued`` requests
``capacity_exhausted``         503     yes         no instance could take the request before
                                                   its deadline, or too many wait for one
``instance_unavailable``       503     yes         the instance failed or did not answer
``platform_unavailable``       503     yes         the platform is starting or stopping, or
                                                   an instance failed before the request ran
``platform_error``             502     no          the platform failed in a way that will not
                                                   pass by itself
=============================  ======  ==========  ==========================================
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

from sealserve.errors import (
    AccessDenied,
    AttestationError,
    CapacityExhausted,
    DeadlineExceeded,
    GatewayError,
    InstanceError,
    InvalidEnvelope,
    KeyServiceError,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    ModelNotStored,
    PlatformError,
    RuntimeUnavailable,
    SealserveError,
    StoreIntegrityError,
)

__all__ = [
    "HostError",
    "RETRY_AFTER_S",
    "bad_request",
    "error_body",
    "error_for_exception",
    "exception_for_answer",
    "raise_for_error",
]

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
    """The ``400 bad_request`` answer with ``message``."""
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
    """``{"error": {"code", "message", "retryable"}}`` as the answer's body."""
    doc: dict[str, Any] = {
        "error": {"code": error.code, "message": error.message, "retryable": error.retryable}
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _parse(body: bytes) -> tuple[str, str, bool] | None:
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error["message"]), bool(error.get("retryable", False))
    except (ValueError, KeyError, TypeError):
        return None


def raise_for_error(status: int, body: bytes) -> None:
    """Raise the sealserve exception an error answer of the host stands for (nothing for
    200).  A refusal of the request itself (``bad_request``, ...) is a ``ValueError``."""
    if status == 200:
        return
    parsed = _parse(body)
    if parsed is None:
        raise InstanceError(f"the instance answered HTTP {status} without an error object")
    code, message, retryable = parsed
    exc: Exception
    if code == "invalid_envelope":
        exc = InvalidEnvelope()
    elif code == "access_denied":
        exc = AccessDenied()
    elif code == "deadline_exceeded":
        exc = DeadlineExceeded(message)
    elif code == "runtime_unavailable":
        exc = RuntimeUnavailable(message)
    elif code == "overloaded":
        exc = CapacityExhausted(message)
    elif code == "model_not_available":
        exc = ModelNotAvailable(message)
    elif code == "memory_budget_exceeded":
        exc = MemoryBudgetExceeded(message)
    elif code.startswith("keyservice_"):
        exc = KeyServiceError(message)
    elif code in ("bad_request", "payload_too_large", "length_required"):
        exc = ValueError(f"{code}: {message}")
    else:
        exc = InstanceError(f"{code}: {message}")
    if isinstance(exc, SealserveError) and retryable and not exc.retryable:
        exc.retryable = True
    raise exc


def exception_for_answer(status: int, body: bytes) -> SealserveError:
    """The sealserve exception a gateway error answer stands for (``retryable`` kept).

    A refusal of the request itself (``bad_request``, ``payload_too_large``, ...) is raised as
    the ``ValueError`` it is.
    """
    parsed = _parse(body)
    if parsed is None:
        return GatewayError(f"the gateway answered HTTP {status} without an error object")
    code, message, retryable = parsed
    exc: SealserveError
    if code == "unknown_model":
        exc = ModelNotAvailable(message)
    elif code in ("too_many_requests", "capacity_exhausted"):
        exc = CapacityExhausted(message)
    elif code == "instance_unavailable":
        exc = InstanceError(message)
    elif code in ("platform_unavailable", "platform_error"):
        exc = PlatformError(message)
    else:
        try:
            raise_for_error(status, body)
        except SealserveError as relayed:
            exc = relayed
        else:  # pragma: no cover - raise_for_error raises for every status but 200
            exc = GatewayError(f"the gateway answered HTTP {status}")
    if retryable and not exc.retryable:
        exc.retryable = True
    return exc
