"""The gateway's error answers: a stable code, a message with no secret, ``retryable``.

Every error is ``{"error": {"code", "message", "retryable"}}``, as on the instance host whose
codes the gateway relays unchanged (docs/http-api.md); a retryable failure carries
``Retry-After``.  The gateway's own:

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

import json

from sealserve.errors import (
    CapacityExhausted,
    InstanceError,
    ModelNotStored,
    PlatformError,
    SealserveError,
)
from sealserve.instance import HostError, error_for_exception

__all__ = ["error_body", "error_for", "too_many_requests", "unknown_model"]


def unknown_model(model_id: str) -> HostError:
    return HostError(
        404, "unknown_model", f"no model {model_id} is stored; GET /v1/models lists the models"
    )


def too_many_requests(limit: int) -> HostError:
    return HostError(
        429,
        "too_many_requests",
        f"the gateway already holds {limit} requests; retry after a while",
        retryable=True,
    )


def error_for(exc: BaseException) -> HostError:
    """The answer for ``exc``: the gateway's codes, else the instance host's."""
    if isinstance(exc, HostError):
        return exc
    if isinstance(exc, ModelNotStored):
        return HostError(404, "unknown_model", str(exc))
    if isinstance(exc, CapacityExhausted):
        return HostError(503, "capacity_exhausted", str(exc), retryable=True)
    if isinstance(exc, InstanceError) and exc.retryable:
        return HostError(503, "instance_unavailable", str(exc), retryable=True)
    if isinstance(exc, PlatformError):
        if exc.retryable:
            return HostError(503, "platform_unavailable", str(exc), retryable=True)
        return HostError(502, "platform_error", str(exc))
    if isinstance(exc, ValueError) and not isinstance(exc, SealserveError):
        # A relayed refusal of the instance ("bad_request: ...") keeps its text.
        code, sep, message = str(exc).partition(": ")
        if sep and code in ("bad_request", "payload_too_large", "length_required"):
            status = {"bad_request": 400, "payload_too_large": 413, "length_required": 411}
            return HostError(status[code], code, message)
    return error_for_exception(exc)


def error_body(error: HostError) -> bytes:
    """``{"error": {"code", "message", "retryable"}}`` as the answer's body."""
    doc = {"error": {"code": error.code, "message": error.message, "retryable": error.retryable}}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")
