"""The user's gateway client over a transport in memory that plays the runtime's part: it
seals, sends, unseals; maps errors back; retries what may be retried, and nothing else."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from sealserve import ResourceStateError
from sealserve.client import GatewayClient
from sealserve.crypto import RequestKey, seal, unseal
from sealserve.errors import (
    AccessDenied,
    CapacityExhausted,
    GatewayError,
    InstanceError,
    ModelNotAvailable,
    PlatformError,
    RuntimeUnavailable,
)
from sealserve.protocol import (
    RouteInfo,
    decode_tensors,
    encode_tensors,
    exception_for_answer,
    input_context,
    output_context,
)
from sealserve.protocol import headers as hd

OWNER = "0" * 64
USER = "1" * 64
MODEL = f"{OWNER}/double"


def error(
    status: int, code: str, retryable: bool, retry_after: str | None = None
) -> httpx.Response:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return httpx.Response(
        status,
        json={"error": {"code": code, "message": f"{code} happened", "retryable": retryable}},
        headers=headers,
    )


class Runtime:
    """The sealed runtime's side of the exchange: doubles ``X``."""

    def __init__(self, key: RequestKey) -> None:
        self.key = key
        self.failures: list[httpx.Response] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures:
            return self.failures.pop(0)
        assert request.url.path == f"/v1/models/{OWNER}/double:infer"
        rid = request.headers[hd.REQUEST_ID_HEADER]
        ids = {"model_id": MODEL, "user_id": request.headers[hd.USER_HEADER], "request_id": rid}
        tensors = decode_tensors(
            unseal(self.key.input_key, request.content, context=input_context(**ids))
        )
        out = encode_tensors({"Y": tensors["X"] * 2})
        route = RouteInfo(kind="run", instance_id=1, load=False, cold_start=False, evicted=0,
                          waits=0, reason="resident on i1", policy="sealserve")  # fmt: skip
        return httpx.Response(
            200,
            content=seal(self.key.output_key, out, context=output_context(**ids)),
            headers={
                hd.SERVER_TIMING_HEADER: "inference;dur=2.5, gateway;dur=4",
                hd.DECISION_HEADER: route.to_header(),
                hd.REASON_HEADER: route.reason,
                hd.POLICY_HEADER: "sealserve",
                hd.INSTANCE_HEADER: "1",
            },
        )


def client_for(runtime: Runtime) -> GatewayClient:
    return GatewayClient("http://gw", transport=httpx.MockTransport(runtime)).open()


def test_infer_seals_the_input_and_unseals_the_answer_for_this_request() -> None:
    key = RequestKey.generate()
    runtime = Runtime(key)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with client_for(runtime) as client:
        result = client.infer(MODEL, {"X": x}, user_id=USER, key=key, request_id="rq-1")
    np.testing.assert_array_equal(result.outputs["Y"], x * 2)
    assert result.request_id == "rq-1"
    assert result.timings == {"inference": 2.5, "gateway": 4.0}
    assert result.instance_id == 1
    assert result.route is not None
    assert result.route.describe() == "run on i1: resident on i1"
    assert result.attempts == 1
    (sent,) = runtime.requests
    assert b"\x00\x00\x80?" not in sent.content  # 1.0f32 is not on the wire in the clear
    assert sent.headers["content-type"] == "application/octet-stream"
    assert int(sent.headers[hd.TIMEOUT_HEADER]) == 60_000


def test_retryable_failures_are_sent_again_up_to_the_limit() -> None:
    key = RequestKey.generate()
    runtime = Runtime(key)
    runtime.failures += [
        error(503, "runtime_unavailable", True, "0"),
        error(429, "too_many_requests", True, "0"),
    ]
    with client_for(runtime) as client:
        result = client.infer(MODEL, {"X": np.ones(2, np.float32)}, user_id=USER, key=key,
                              retries=2)  # fmt: skip
        assert result.attempts == 3
        assert len({r.headers[hd.REQUEST_ID_HEADER] for r in runtime.requests}) == 1
        runtime.failures += [error(503, "runtime_unavailable", True, "0")] * 2
        with pytest.raises(RuntimeUnavailable) as info:
            client.infer(MODEL, {"X": np.ones(2, np.float32)}, user_id=USER, key=key, retries=1)
        assert info.value.retryable


def test_a_refusal_is_never_retried() -> None:
    key = RequestKey.generate()
    runtime = Runtime(key)
    runtime.failures.append(error(403, "access_denied", False))
    with client_for(runtime) as client, pytest.raises(AccessDenied):
        client.infer(MODEL, {"X": np.ones(2, np.float32)}, user_id=USER, key=key, retries=5)
    assert len(runtime.requests) == 1


@pytest.mark.parametrize(
    ("response", "kind", "retryable"),
    [
        (error(404, "unknown_model", False), ModelNotAvailable, False),
        (error(429, "too_many_requests", True), CapacityExhausted, True),
        (error(503, "capacity_exhausted", True), CapacityExhausted, True),
        (error(503, "instance_unavailable", True), InstanceError, True),
        (error(503, "platform_unavailable", True), PlatformError, True),
        (error(502, "platform_error", False), PlatformError, False),
        (error(503, "overloaded", True), CapacityExhausted, True),
        (httpx.Response(502, text="bad gateway"), GatewayError, False),
    ],
)
def test_error_answers_become_sealserve_errors(
    response: httpx.Response, kind: type[Exception], retryable: bool
) -> None:
    exc: Any = exception_for_answer(response.status_code, response.content)
    assert isinstance(exc, kind)
    assert exc.retryable is retryable


def test_a_malformed_request_is_the_callers_error() -> None:
    response = error(400, "bad_request", False)
    with pytest.raises(ValueError, match="bad_request"):
        exception_for_answer(response.status_code, response.content)


def test_an_unreachable_gateway_is_retryable_and_a_closed_client_says_so() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = GatewayClient("http://gw", transport=httpx.MockTransport(refuse)).open()
    assert not client.healthy()
    with pytest.raises(GatewayError, match="unreachable") as info:
        client.models()
    assert info.value.retryable
    client.close()
    with pytest.raises(ResourceStateError, match="closed"):
        client.models()
    with pytest.raises(ValueError, match="url must be an http"):
        GatewayClient("gw:8480")


def test_route_info_round_trips_through_its_header() -> None:
    route = RouteInfo(kind="start", instance_id=4, load=True, cold_start=True, evicted=2,
                      waits=3, reason="cold start", policy="sesemi")  # fmt: skip
    parsed = RouteInfo.from_headers(route.to_header(), "cold start", "sesemi")
    assert parsed == route
    assert parsed.describe() == "start i4 [load; evict 2; after 3 waits]: cold start"
    assert RouteInfo.from_headers(None, None, None) is None
    assert RouteInfo.from_headers("run;instance=x", None, None) is None
