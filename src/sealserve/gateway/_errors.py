"""The gateway's error answers: its own codes over the instance host's.

The codes, their statuses and ``retryable`` are tabled in :mod:`sealserve.protocol`'s error
module (one table for the host's and the gateway's, which the client reads back with
:func:`~sealserve.protocol.exception_for_answer`); the bodies are
:func:`~sealserve.protocol.error_body`'s.
"""

from __future__ import annotations

from sealserve.errors import (
    CapacityExhausted,
    InstanceError,
    ModelNotStored,
    PlatformError,
    SealserveError,
)
from sealserve.gateway._http import BodyError
from sealserve.protocol import HostError, error_for_exception

__all__ = ["error_for", "too_many_requests", "unknown_model"]


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
    if isinstance(exc, BodyError):  # the client left or was cut off mid-body: no one to answer
        return HostError(400, "bad_request", str(exc))
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
