"""A client of one instance host's binary endpoint (tests, the benchmark, the gateway).

::

    with InstanceClient("http://127.0.0.1:8080") as instance:
        result = instance.infer(model_id=mid, user_id=uid, request_id=rid, sealed_input=env)
        outputs = unseal_output(request_key, result.sealed_output, model_id=mid, ...)

or, as the user's side in one call, :meth:`InstanceClient.infer_tensors` (seal, send, unseal).
Error answers become sealserve's exceptions (see :func:`raise_for_error`), so a caller can
tell a retryable failure (``exc.retryable``) from one that will always fail.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from sealserve.crypto import RequestKey
from sealserve.errors import (
    AccessDenied,
    CapacityExhausted,
    DeadlineExceeded,
    InstanceError,
    InvalidEnvelope,
    KeyServiceError,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    RuntimeUnavailable,
    SealserveError,
)
from sealserve.instance import _headers as hd
from sealserve.runtime import new_request_id, seal_input, unseal_output

__all__ = ["ClientState", "InferResult", "InstanceClient", "raise_for_error"]


class ClientState(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class InferResult:
    """What ``/v1/infer`` answered: the sealed output and the stage timings (ms)."""

    request_id: str
    sealed_output: bytes
    timings: dict[str, float]


def raise_for_error(response: httpx.Response) -> None:
    """Raise the sealserve exception an error answer of the host stands for."""
    if response.status_code == 200:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        retryable = bool(error.get("retryable", False))
    except (ValueError, KeyError, TypeError):
        raise InstanceError(
            f"the instance answered HTTP {response.status_code} without an error object"
        ) from None
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


class InstanceClient:
    """HTTP client of one instance; use it inside ``with`` (or ``open``/``close``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._transport = transport
        self._http: httpx.Client | None = None
        self.state = ClientState.UNOPENED

    def open(self) -> InstanceClient:
        if self.state is not ClientState.UNOPENED:
            raise InstanceError(f"the instance client is {self.state.value}; open it once")
        self._http = httpx.Client(
            base_url=self.url, timeout=self._timeout_s, transport=self._transport
        )
        self.state = ClientState.OPENED
        return self

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        self.state = ClientState.CLOSED

    def __enter__(self) -> InstanceClient:
        return self.open() if self.state is ClientState.UNOPENED else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise InstanceError(f"the instance client is {self.state.value}; open() it first")
        return self._http

    # -- calls ---------------------------------------------------------------------------------

    def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes,
        timeout_s: float | None = None,
        deadline_ms: int | None = None,
    ) -> InferResult:
        """Send a sealed input; the sealed output and timings (or the error, raised)."""
        headers = {
            hd.MODEL_HEADER: model_id,
            hd.USER_HEADER: user_id,
            hd.REQUEST_ID_HEADER: request_id,
            "content-type": "application/octet-stream",
        }
        if deadline_ms is not None:
            headers[hd.DEADLINE_HEADER] = str(int(deadline_ms))
        elif timeout_s is not None:
            headers[hd.TIMEOUT_HEADER] = str(int(timeout_s * 1000))
        http_timeout = None if timeout_s is None else timeout_s + 5.0
        response = self._client().post(
            "/v1/infer",
            content=sealed_input,
            headers=headers,
            timeout=http_timeout if http_timeout is not None else self._timeout_s,
        )
        raise_for_error(response)
        return InferResult(
            request_id=request_id,
            sealed_output=response.content,
            timings=hd.parse_server_timing(response.headers.get(hd.SERVER_TIMING_HEADER, "")),
        )

    def infer_tensors(
        self,
        key: RequestKey,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        model_id: str,
        user_id: str,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, float]]:
        """The user's whole side: seal ``inputs``, send them, unseal the outputs."""
        rid = request_id or new_request_id()
        sealed = seal_input(key, inputs, model_id=model_id, user_id=user_id, request_id=rid)
        result = self.infer(
            model_id=model_id,
            user_id=user_id,
            request_id=rid,
            sealed_input=sealed,
            timeout_s=timeout_s,
        )
        outputs = unseal_output(
            key, result.sealed_output, model_id=model_id, user_id=user_id, request_id=rid
        )
        return outputs, result.timings

    def load(
        self, *, model_id: str, user_id: str, timeout_s: float | None = None
    ) -> dict[str, float]:
        """Make the model resident (with the keys of ``user_id``); its stage timings."""
        body: dict[str, Any] = {"model_id": model_id, "user_id": user_id}
        if timeout_s is not None:
            body["timeout_ms"] = int(timeout_s * 1000)
        response = self._client().post("/v1/load", content=json.dumps(body))
        raise_for_error(response)
        timings = response.json().get("timings", {})
        return {str(k): float(v) for k, v in timings.items()}

    def evict(self, model_id: str) -> bool:
        response = self._client().post("/v1/evict", content=json.dumps({"model_id": model_id}))
        raise_for_error(response)
        return bool(response.json().get("evicted"))

    def stats(self) -> dict[str, Any]:
        response = self._client().get("/v1/stats")
        raise_for_error(response)
        doc: dict[str, Any] = response.json()
        return doc

    def healthy(self) -> bool:
        """Whether the instance answers ``/healthz`` with 200 (its runtime is ready)."""
        try:
            return self._client().get("/healthz", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def __repr__(self) -> str:
        return f"InstanceClient({self.url!r}, state={self.state.value})"
