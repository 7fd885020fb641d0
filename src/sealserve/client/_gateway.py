"""The user's side of an inference through the gateway: seal, send, unseal.

::

    with GatewayClient("http://127.0.0.1:8480") as gateway:
        result = gateway.infer(model_id, {"input": pixels}, user_id=user.principal_id,
                               key=request_key)
        result.outputs["logits"], result.timings, result.route.describe()

The input is sealed here under the request key's input subkey and bound to the model, the
user and a fresh request id; the gateway, the platform and the instance host only ever see
the envelope, and the output comes back sealed to this request.  Error answers become
sealserve's exceptions with ``retryable`` set as the gateway says; :meth:`GatewayClient.infer`
retries the retryable ones ``retries`` times, waiting what ``Retry-After`` says.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._resource import Resource
from sealserve._tls import client_context
from sealserve.crypto import RequestKey
from sealserve.errors import GatewayError, SealserveError
from sealserve.protocol import (
    RouteInfo,
    exception_for_answer,
    new_request_id,
    seal_input,
    split_model_id,
    unseal_output,
)
from sealserve.protocol import headers as hd

__all__ = ["GatewayAnswer", "GatewayClient", "Inference"]

_MAX_RETRY_WAIT_S: Final = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayAnswer:
    """What the gateway answered to a sealed input (nothing here is in the clear)."""

    request_id: str
    sealed_output: bytes
    #: Stage timings (ms): the instance's, the platform's and the gateway's.
    timings: dict[str, float]
    #: How the router placed the request.
    route: RouteInfo | None
    instance_id: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Inference:
    """An unsealed result: the output tensors, with how they were computed."""

    request_id: str
    outputs: dict[str, np.ndarray[Any, Any]]
    timings: dict[str, float]
    route: RouteInfo | None
    instance_id: int | None
    #: Sends it took (1 unless a retryable failure was retried).
    attempts: int = 1


class GatewayClient(Resource):
    """HTTP client of the gateway's public API; use it inside ``with``.  Thread-safe.

    An ``https://`` gateway's certificate must chain to ``ca_bundle`` (a PEM file; default:
    the system's roots)."""

    resource_name = "the gateway client"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        super().__init__()
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._transport = transport
        self._clock = clock
        self._verify: ssl.SSLContext | bool = (
            client_context(ca_bundle) if parsed.scheme == "https" else True
        )
        self._http: httpx.Client | None = None

    def _open(self) -> None:
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(self._timeout_s + 5.0, connect=10.0),
            transport=self._transport,
            verify=self._verify,
        )

    def _close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _client(self) -> httpx.Client:
        self._check_opened()
        assert self._http is not None
        return self._http

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            error = GatewayError(f"the gateway at {self.url} is unreachable: {type(exc).__name__}")
            error.retryable = True
            raise error from None

    # -- inference -----------------------------------------------------------------------------

    def _exchange(
        self, model_id: str, user_id: str, request_id: str, sealed: bytes, timeout_s: float | None
    ) -> httpx.Response:
        owner, name = split_model_id(model_id)
        timeout = self._timeout_s if timeout_s is None else timeout_s
        headers = {
            hd.USER_HEADER: user_id,
            hd.REQUEST_ID_HEADER: request_id,
            hd.TIMEOUT_HEADER: str(max(1, int(timeout * 1000))),
            "content-type": "application/octet-stream",
        }
        return self._send(
            "POST",
            f"/v1/models/{owner}/{urllib.parse.quote(name, safe='')}:infer",
            content=sealed,
            headers=headers,
            timeout=httpx.Timeout(timeout + 5.0, connect=10.0),
        )

    def infer_sealed(
        self,
        model_id: str,
        *,
        user_id: str,
        request_id: str,
        sealed_input: bytes,
        timeout_s: float | None = None,
    ) -> GatewayAnswer:
        """Send a sealed input; the sealed output, timings and route (or the error, raised)."""
        response = self._exchange(model_id, user_id, request_id, sealed_input, timeout_s)
        if response.status_code != 200:
            raise exception_for_answer(response.status_code, response.content)
        return _answer(response, request_id)

    def infer(
        self,
        model_id: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        user_id: str,
        key: RequestKey,
        request_id: str | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
    ) -> Inference:
        """The user's whole side: seal ``inputs``, send, unseal the outputs.

        A retryable failure is sent again (sealed afresh, same request id) at most
        ``retries`` times, after the wait its ``Retry-After`` asks (at most 5 s).
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        rid = request_id or new_request_id()
        for attempt in range(1, retries + 2):  # bounded: at most retries + 1 sends
            sealed = seal_input(
                key, inputs, model_id=model_id, user_id=user_id, request_id=rid, clock=self._clock
            )
            try:
                response = self._exchange(model_id, user_id, rid, sealed, timeout_s)
            except SealserveError:
                if attempt > retries:
                    raise
                time.sleep(1.0)
                continue
            if response.status_code != 200:
                error = exception_for_answer(response.status_code, response.content)
                if not error.retryable or attempt > retries:
                    raise error
                time.sleep(_retry_after(response))
                continue
            answer = _answer(response, rid)
            outputs = unseal_output(
                key, answer.sealed_output, model_id=model_id, user_id=user_id, request_id=rid
            )
            return Inference(
                request_id=rid,
                outputs=outputs,
                timings=answer.timings,
                route=answer.route,
                instance_id=answer.instance_id,
                attempts=attempt,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the rest ------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The stored models (ids, sizes, key versions)."""
        response = self._send("GET", "/v1/models")
        if response.status_code != 200:
            raise exception_for_answer(response.status_code, response.content)
        models: list[dict[str, Any]] = response.json()["models"]
        return models

    def platform(self, *, recent: int = 32) -> dict[str, Any]:
        """The platform's instances, meters, counters and recent routing decisions."""
        response = self._send("GET", "/v1/platform", params={"recent": str(recent)})
        if response.status_code != 200:
            raise exception_for_answer(response.status_code, response.content)
        doc: dict[str, Any] = response.json()
        return doc

    def healthy(self) -> bool:
        """Whether the gateway answers ``GET /healthz`` with 200 (``False`` when unreachable)."""
        try:
            return self._send("GET", "/healthz").status_code == 200
        except GatewayError:
            return False

    def __repr__(self) -> str:
        return f"GatewayClient({self.url!r}, state={self.state.value})"


def _answer(response: httpx.Response, request_id: str) -> GatewayAnswer:
    instance = response.headers.get(hd.INSTANCE_HEADER)
    return GatewayAnswer(
        request_id=request_id,
        sealed_output=response.content,
        timings=hd.parse_server_timing(response.headers.get(hd.SERVER_TIMING_HEADER, "")),
        route=RouteInfo.from_headers(
            response.headers.get(hd.DECISION_HEADER),
            response.headers.get(hd.REASON_HEADER),
            response.headers.get(hd.POLICY_HEADER),
        ),
        instance_id=int(instance) if instance and instance.isdigit() else None,
    )


def _retry_after(response: httpx.Response) -> float:
    try:
        wait = float(response.headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return min(_MAX_RETRY_WAIT_S, max(0.0, wait))
