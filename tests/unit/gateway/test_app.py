"""The gateway's HTTP surface over a platform in memory: validation, limits, deadlines,
backpressure, error relaying, and the informational endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from sealserve._clock import ManualClock
from sealserve.errors import (
    AccessDenied,
    CapacityExhausted,
    InvalidEnvelope,
    MemoryBudgetExceeded,
    ModelNotStored,
    PlatformError,
    RuntimeUnavailable,
)
from sealserve.gateway import Gateway, GatewayOptions
from sealserve.gateway._http import HttpServer
from sealserve.instance import ModelManifest
from sealserve.platform import DecisionRecord, PlatformResult, PlatformStats
from sealserve.protocol import RouteInfo
from sealserve.protocol import headers as hd
from tests.unit.gateway.lean import LeanClientTransport

OWNER = "0" * 64
USER = "1" * 64
MODEL = f"{OWNER}/resnet"
PATH = f"/v1/models/{OWNER}/resnet:infer"


class Models:
    def __init__(self) -> None:
        self.manifest = ModelManifest(
            model_id=MODEL, digest="ab" * 32, size=1000, key_version=2, chunk_size=64, stored_at=5.0
        )

    def get(self, model_id: str) -> ModelManifest:
        if model_id != MODEL:
            raise ModelNotStored(f"no model {model_id}")
        return self.manifest

    def list(self) -> list[ModelManifest]:
        return [self.manifest]


class FakePlatform:
    """Answers every request with a fixed decision, or raises what it is told to."""

    policy = "sealserve"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes,
        deadline_s: float,
    ) -> PlatformResult:
        self.calls.append(
            {"model_id": model_id, "user_id": user_id, "request_id": request_id,
             "body": sealed_input, "deadline_s": deadline_s}
        )  # fmt: skip
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        decision = DecisionRecord(
            request_id=1, model=model_id, kind="run", instance_id=3, load=True, cold_start=False,
            evict=("x",), reason="load on i3: expected 12 ms \u2014 cheapest", expected_ms=12.0,
            waits=1, at=0.0,
        )  # fmt: skip
        return PlatformResult(
            request_id=request_id,
            sealed_output=b"sealed-output:" + sealed_input,
            timings={"inference": 4.0, "queue": 1.0},
            decision=decision,
            instance_id=3,
        )

    def stats(self) -> PlatformStats:
        return PlatformStats(
            policy="sealserve", instances=(), waiting=0, in_flight=0, counters={"served": 1},
            gb_seconds=1.5, instance_seconds=0.75, decisions={"run": 1}, recent=(), config={},
        )  # fmt: skip


Call = Callable[[httpx.AsyncClient, FakePlatform], Awaitable[None]]


def run(body: Call, **options: Any) -> None:
    """Run ``body`` twice: through the Starlette application (ASGI) and through the gateway's
    own HTTP server (the lean inference path and its ASGI bridge), each on a fresh gateway."""
    for server in ("asgi", "lean"):
        asyncio.run(_through(server, body, options))


async def _through(server: str, body: Call, options: dict[str, Any]) -> None:
    platform = FakePlatform()
    gateway = Gateway(
        platform, Models(), options=GatewayOptions(**options), clock=ManualClock(start=1000.0)
    )
    transport: httpx.AsyncBaseTransport
    if server == "asgi":
        transport = httpx.ASGITransport(app=gateway.app)
    else:
        transport = LeanClientTransport(
            HttpServer(app=gateway.app, routes=gateway.lean_routes()), piece=4096
        )
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        await body(client, platform)


def good_headers(**extra: str) -> dict[str, str]:
    return {hd.USER_HEADER: USER, hd.REQUEST_ID_HEADER: "req-1", **extra}


def error_of(response: httpx.Response) -> dict[str, Any]:
    doc: dict[str, Any] = response.json()["error"]
    return doc


def test_a_sealed_input_goes_through_and_the_answer_says_how_it_was_served() -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        response = await client.post(PATH, content=b"envelope", headers=good_headers())
        assert response.status_code == 200, response.text
        assert response.content == b"sealed-output:envelope"
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers[hd.REQUEST_ID_HEADER] == "req-1"
        assert response.headers[hd.INSTANCE_HEADER] == "3"
        assert response.headers[hd.POLICY_HEADER] == "sealserve"
        stages = hd.parse_server_timing(response.headers[hd.SERVER_TIMING_HEADER])
        assert {"inference", "queue", "gateway", "gateway_body"} <= set(stages)
        route = RouteInfo.from_headers(
            response.headers[hd.DECISION_HEADER],
            response.headers[hd.REASON_HEADER],
            response.headers[hd.POLICY_HEADER],
        )
        assert route is not None
        assert (route.kind, route.instance_id, route.load, route.evicted, route.waits) == (
            "run", 3, True, 1, 1,
        )  # fmt: skip
        assert route.reason == "load on i3: expected 12 ms ? cheapest"  # ASCII only
        (call,) = platform.calls
        assert call["model_id"] == MODEL
        assert call["body"] == b"envelope"
        assert call["deadline_s"] == pytest.approx(1000.0 + 60.0)  # the default timeout

    run(body)


@pytest.mark.parametrize(
    ("path", "headers", "message"),
    [
        (f"/v1/models/{'z' * 64}/resnet:infer", good_headers(), "owner"),
        (PATH, {hd.REQUEST_ID_HEADER: "r"}, "x-sealserve-user must be 64 hex digits"),
        (PATH, {hd.USER_HEADER: "A" * 64, hd.REQUEST_ID_HEADER: "r"}, "64 hex digits"),
        (PATH, {hd.USER_HEADER: USER}, "the request id is missing"),
        (PATH, good_headers(**{hd.REQUEST_ID_HEADER: "-bad"}), "request_id has value '-bad'"),
        (PATH, good_headers(**{hd.TIMEOUT_HEADER: "soon"}), "not a number"),
        (PATH, good_headers(**{hd.DEADLINE_HEADER: "nan"}), "not a number"),
    ],
)
def test_malformed_requests_are_refused_with_a_message_that_says_why(
    path: str, headers: dict[str, str], message: str
) -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        response = await client.post(path, content=b"envelope", headers=headers)
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "bad_request"
        assert message in error["message"]
        assert error["retryable"] is False
        assert platform.calls == []

    run(body)


def test_size_limits_and_content_length() -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        too_big = await client.post(PATH, content=b"x" * 11, headers=good_headers())
        assert too_big.status_code == 413
        assert error_of(too_big)["code"] == "payload_too_large"

        async def chunks() -> Any:
            yield b"abc"

        no_length = await client.post(PATH, content=chunks(), headers=good_headers())
        assert no_length.status_code == 411
        assert error_of(no_length)["code"] == "length_required"
        empty = await client.post(PATH, content=b"", headers=good_headers())
        assert empty.status_code == 400
        assert platform.calls == []

    run(body, max_body_bytes=10)


def test_deadlines_are_taken_from_the_headers_and_capped() -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        past = await client.post(
            PATH, content=b"e", headers=good_headers(**{hd.DEADLINE_HEADER: "999000"})
        )
        assert past.status_code == 503
        assert error_of(past)["code"] == "deadline_exceeded"
        assert past.headers["retry-after"] == "1"
        await client.post(PATH, content=b"e", headers=good_headers(**{hd.TIMEOUT_HEADER: "2500"}))
        await client.post(
            PATH, content=b"e", headers=good_headers(**{hd.DEADLINE_HEADER: "1003000"})
        )
        await client.post(
            PATH, content=b"e", headers=good_headers(**{hd.TIMEOUT_HEADER: "99999999"})
        )
        deadlines = [c["deadline_s"] for c in platform.calls]
        assert deadlines == [pytest.approx(1002.5), pytest.approx(1003.0), pytest.approx(1100.0)]

    run(body, max_timeout_s=100.0)


def test_an_unknown_model_is_a_clear_404_and_never_reaches_the_platform() -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        response = await client.post(
            f"/v1/models/{OWNER}/nope:infer", content=b"e", headers=good_headers()
        )
        assert response.status_code == 404
        error = error_of(response)
        assert error["code"] == "unknown_model"
        assert f"{OWNER}/nope" in error["message"]
        assert "GET /v1/models" in error["message"]
        assert platform.calls == []

    run(body)


@pytest.mark.parametrize(
    ("error", "status", "code", "retryable"),
    [
        (AccessDenied(), 403, "access_denied", False),
        (InvalidEnvelope(), 400, "invalid_envelope", False),
        (RuntimeUnavailable("the runtime died"), 503, "runtime_unavailable", True),
        (CapacityExhausted("all busy"), 503, "capacity_exhausted", True),
        (MemoryBudgetExceeded("too big"), 507, "memory_budget_exceeded", False),
        (PlatformError("broken"), 502, "platform_error", False),
        (KeyError("secret detail"), 500, "internal", False),
    ],
)
def test_failures_are_relayed_with_their_code_and_retryability(
    error: BaseException, status: int, code: str, retryable: bool
) -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        platform.error = error
        response = await client.post(PATH, content=b"e", headers=good_headers())
        assert response.status_code == status
        doc = error_of(response)
        assert (doc["code"], doc["retryable"]) == (code, retryable)
        assert ("retry-after" in response.headers) is retryable
        assert "secret detail" not in response.text

    run(body)


def test_a_retryable_platform_error_is_relayed_as_retryable() -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        error = PlatformError("instance 2 failed before the request ran")
        error.retryable = True
        platform.error = error
        response = await client.post(PATH, content=b"e", headers=good_headers())
        assert response.status_code == 503
        assert error_of(response)["code"] == "platform_unavailable"
        assert response.headers["retry-after"] == "1"

    run(body)


def test_past_max_queued_requests_the_gateway_answers_429_with_retry_after() -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        platform.gate = asyncio.Event()
        first = asyncio.create_task(client.post(PATH, content=b"e", headers=good_headers()))
        while not platform.calls:
            await asyncio.sleep(0)
        second = await client.post(PATH, content=b"e", headers=good_headers())
        assert second.status_code == 429
        assert error_of(second)["code"] == "too_many_requests"
        assert second.headers["retry-after"] == "1"
        # Health says so (it said 200 while every request got 429).
        health = await client.get("/healthz")
        assert (health.status_code, health.json()) == (
            503,
            {"status": "saturated", "held": 1, "max_queued": 1},
        )
        platform.gate.set()
        assert (await first).status_code == 200
        assert (await client.get("/healthz")).json() == {"status": "ok"}

    run(body, max_queued=1)


def test_models_platform_health_metrics_and_openapi() -> None:
    async def body(client: httpx.AsyncClient, platform: FakePlatform) -> None:
        models = (await client.get("/v1/models")).json()["models"]
        assert models == [
            {"model_id": MODEL, "owner_id": OWNER, "name": "resnet", "size": 1000,
             "key_version": 2, "digest": "sha256:" + "ab" * 32, "stored_at": 5.0}
        ]  # fmt: skip
        stats = (await client.get("/v1/platform?recent=0")).json()
        assert stats["policy"] == "sealserve"
        assert stats["gb_seconds"] == 1.5
        bad = await client.get("/v1/platform?recent=many")
        assert bad.status_code == 400
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        await client.post(PATH, content=b"e", headers=good_headers())
        metrics = (await client.get("/metrics")).text
        assert 'sealserve_gateway_requests_total{code="ok"} 1.0' in metrics
        assert "sealserve_gateway_request_seconds_bucket" in metrics
        spec = (await client.get("/openapi.json")).json()
        assert "/v1/models/{owner_id}/{name}:infer" in spec["paths"]

    run(body)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_queued must be an int >= 1, got 0"):
        GatewayOptions(max_queued=0)
    with pytest.raises(ValueError, match="must not exceed max_timeout_s"):
        GatewayOptions(default_timeout_s=100.0, max_timeout_s=10.0)
