"""The instance host's HTTP surface: the OpenWhisk action contract and a binary endpoint.

OpenWhisk (so the instance runs as a blackbox action unchanged):

* ``POST /init`` — once; a second is refused (403 ``already_initialized``);
* ``POST /run`` — ``{"value": {"model_id", "user_id", "request_id", "input"}, "activation_id",
  "deadline", ...}`` where ``input`` is the sealed input in base64 and ``deadline`` Unix
  milliseconds (number or string); other fields are tolerated.  Answers ``{"output",
  "request_id", "activation_id", "timings"}``, or ``{"error": ...}`` with a non-200 status.
  Runs may overlap.  After each, the line ``XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX`` goes to
  stdout and stderr.

For the gateway (no base64, no JSON around the payload):

* ``POST /v1/infer`` — body: the sealed input; headers: model, user, request id, deadline
  (see :mod:`._headers`); answer: the sealed output, stage timings in ``Server-Timing``;
* ``POST /v1/load`` ``{"model_id", "user_id"}``, ``POST /v1/evict`` ``{"model_id"}``: the
  platform's control calls, only with the host's control token (``Authorization: Bearer``;
  else 401 ``unauthorized``): any local process can reach the port, and a load or an evict
  on someone else's behalf costs the instance memory, a key release and its warm models;
* ``GET /v1/stats``, ``GET /healthz``, ``GET /metrics``;
* the Open Inference Protocol's ``GET /v2/health/live`` (fails once the runtime failed for
  good) and ``/v2/health/ready`` (fails while no runtime serves), :mod:`sealserve._health`.

Errors are ``{"error": {"code", "message", "retryable"}}`` (see :mod:`._errors`).  Nothing on
this surface is ever in the clear: the host handles envelopes and ids.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._health import LIVE_PATH, READY_PATH, Health
from sealserve._log import get_logger
from sealserve.ecall import Message, timings, wire
from sealserve.errors import BackpressureTimeout, DeadlineExceeded, SealserveError
from sealserve.instance._metrics import InstanceMetrics
from sealserve.instance._supervisor import RuntimeGeneration, RuntimeHandle, RuntimeStatus
from sealserve.protocol import (
    HostError,
    bad_request,
    check_request_id,
    error_body,
    error_for_exception,
    split_model_id,
)
from sealserve.protocol import headers as hd

__all__ = ["ACTIVATION_MARKER", "HostOptions", "InstanceHost"]

_log = get_logger(__name__)

#: The line OpenWhisk looks for at the end of an activation's logs.
ACTIVATION_MARKER: Final = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
_PRINCIPAL = re.compile(r"[0-9a-f]{64}")
_MAX_TIMEOUT_S: Final = 3600.0
_JSON_LIMIT: Final = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostOptions:
    """The HTTP side of an instance."""

    #: Requests served at once; more get 503 ``overloaded``.
    concurrency: int = 4
    #: Largest sealed input (``/v1/infer`` body; ``/run`` allows its base64 in JSON).
    max_body_bytes: int = 64 << 20
    #: Deadline of a request that names none.
    default_timeout_s: float = 60.0
    #: Print OpenWhisk's end-of-activation marker after each ``/run``.
    activation_markers: bool = True
    #: Slow clients: the longest wait for a body's next byte (408 and close after it).
    body_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 < self.body_timeout_s <= _MAX_TIMEOUT_S:
            raise ValueError(
                f"body_timeout_s must be within (0, {_MAX_TIMEOUT_S}], got {self.body_timeout_s!r}"
            )
        if not 0 < self.default_timeout_s <= _MAX_TIMEOUT_S:
            raise ValueError(
                f"default_timeout_s must be within (0, {_MAX_TIMEOUT_S}], "
                f"got {self.default_timeout_s!r}"
            )


class InstanceHost:
    """The HTTP application of one instance over its runtime supervisor."""

    def __init__(
        self,
        supervisor: RuntimeHandle,
        *,
        options: HostOptions | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sandbox_start_s: float | None = None,
        control_token: str | None = None,
    ) -> None:
        if control_token is not None and (
            not isinstance(control_token, str) or len(control_token) < 32
        ):
            raise ValueError("control_token must be a string of at least 32 characters")
        self.supervisor = supervisor
        #: What ``/v1/load`` and ``/v1/evict`` need (made here unless given); the host hands it
        #: to its launcher in the ready line, which only the launcher reads.
        self.control_token = control_token or secrets.token_urlsafe(32)
        self._bearer = f"Bearer {self.control_token}".encode("ascii")
        #: Live unless the runtime failed for good; ready while a runtime serves.
        self.health = Health(live_checks=(self._live_check,), ready_checks=(self._ready_check,))
        self.options = options or HostOptions()
        self.registry = registry or CollectorRegistry()
        self._clock = clock
        self._started = time.monotonic()
        self._sandbox_start_ms = None if sandbox_start_s is None else sandbox_start_s * 1000
        self._initialized = False
        self._in_flight = 0
        self._served = 0
        self._lock = threading.Lock()
        self._cold_pending: dict[str, float] | None = None
        self._last_cold_start: dict[str, float] = {}
        self._last_stats: dict[str, Any] | None = None
        self.metrics = InstanceMetrics(
            self.registry,
            runtime_stats=self._stats_for_metrics,
            restarts=lambda: supervisor.restarts,
            runtime_up=lambda: supervisor.status is RuntimeStatus.READY,
        )
        self.app = Starlette(
            routes=[
                Route("/init", self._endpoint("init", self._init), methods=["POST"]),
                Route("/run", self._endpoint("run", self._run), methods=["POST"]),
                Route("/v1/infer", self._endpoint("infer", self._infer), methods=["POST"]),
                Route("/v1/load", self._endpoint("load", self._load), methods=["POST"]),
                Route("/v1/evict", self._endpoint("evict", self._evict), methods=["POST"]),
                Route("/v1/stats", self._endpoint("stats", self._stats), methods=["GET"]),
                Route("/healthz", self._healthz, methods=["GET"]),
                Route(LIVE_PATH, self._health_probe, methods=["GET"]),
                Route(READY_PATH, self._health_probe, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
            ],
        )

    # -- cold starts ---------------------------------------------------------------------------

    def runtime_started(self, generation: RuntimeGeneration) -> None:
        """The supervisor's ``on_start``: the next answer carries this cold start's stages."""
        cold: dict[str, float] = {}
        if generation.number == 1 and self._sandbox_start_ms is not None:
            cold[timings.SANDBOX_START] = round(self._sandbox_start_ms, 3)
        cold[timings.RUNTIME_START] = round(generation.start_s * 1000, 3)
        with self._lock:
            self._cold_pending = cold

    def _take_cold_start(self, stages: Mapping[str, float]) -> dict[str, float]:
        with self._lock:
            cold, self._cold_pending = self._cold_pending, None
            if cold is None:
                return {}
            merged = dict(cold)
            for stage in timings.COLD_START_STAGES:
                if stage in stages and stage not in merged:
                    merged[stage] = stages[stage]
            self._last_cold_start = merged
        self.metrics.record_cold_start(merged)
        return cold

    # -- plumbing ------------------------------------------------------------------------------

    def _endpoint(
        self, name: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except ClientDisconnect:  # it left, or was cut off mid-body: no one to answer
                _log.event("instance.client_gone", endpoint=name)
                self.metrics.requests.labels(endpoint=name, code="client_gone").inc()
                response = Response(status_code=400)
            except Exception as exc:
                error = error_for_exception(exc)
                level = logging.ERROR if error.status == 500 else logging.INFO
                _log.event("instance.error", level=level, endpoint=name, code=error.code,
                           error=type(exc).__name__)  # fmt: skip
                self.metrics.requests.labels(endpoint=name, code=error.code).inc()
                response = Response(
                    error_body(error),
                    status_code=error.status,
                    media_type="application/json",
                    headers=error.headers(),
                )
            finally:
                if name == "run" and self.options.activation_markers:
                    _marker()
            return response

        return endpoint

    def _timeout(self, deadline_ms: Any, timeout_ms: Any = None) -> float:
        """Seconds left for a request, from an absolute deadline (Unix ms, number or string)
        or a relative one (ms); the default when neither is given."""
        if deadline_ms is not None and deadline_ms != "":
            value = _number("deadline", deadline_ms)
            remaining = value / 1000.0 - self._clock.time()
        elif timeout_ms is not None and timeout_ms != "":
            remaining = _number("timeout", timeout_ms) / 1000.0
        else:
            remaining = self.options.default_timeout_s
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline had passed when it arrived")
        return min(remaining, _MAX_TIMEOUT_S)

    def _admit(self) -> None:
        if self._in_flight >= self.options.concurrency:
            raise HostError(
                503,
                "overloaded",
                f"the instance already serves {self.options.concurrency} requests",
                retryable=True,
            )
        self._in_flight += 1
        self.metrics.in_flight.set(self._in_flight)

    def _done(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)

    async def _generation(self, timeout: float) -> RuntimeGeneration:
        sup = self.supervisor
        if sup.status is RuntimeStatus.READY:
            try:
                return sup.current(timeout=0)
            except SealserveError:
                pass
        return await asyncio.to_thread(sup.current, timeout=timeout)

    async def _await_reply(
        self,
        generation: RuntimeGeneration,
        future: concurrent.futures.Future[Message],
        timeout: float,
    ) -> Message:
        delivered = False
        try:
            message = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
            delivered = True
            return message
        except TimeoutError:
            raise DeadlineExceeded(
                f"the runtime did not answer within the deadline ({timeout:.3f}s)"
            ) from None
        finally:
            if not delivered:  # a deadline, a disconnect: the reply is released on arrival
                generation.endpoint.abandon(future)

    async def _send(
        self,
        generation: RuntimeGeneration,
        op: wire.Op,
        meta: Mapping[str, Any],
        payload: bytes | bytearray | None,
        timeout: float,
    ) -> concurrent.futures.Future[Message]:
        """Put the call in the channel: at once when there is room (the usual case), else
        from a worker thread, so the event loop never waits for room."""
        endpoint = generation.endpoint
        try:
            return endpoint.call_async(op, meta, payload, send_timeout=0)
        except BackpressureTimeout:
            return await asyncio.to_thread(
                endpoint.call_async, op, meta, payload, send_timeout=timeout
            )

    async def _call(
        self, op: wire.Op, meta: Mapping[str, Any], payload: bytes | None, timeout: float
    ) -> Message:
        started = time.monotonic()
        generation = await self._generation(timeout)
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed while the runtime was starting")
        future = await self._send(generation, op, meta, payload, remaining)
        return await self._await_reply(generation, future, remaining)

    # -- the binary endpoint -------------------------------------------------------------------

    async def _infer(self, request: Request) -> Response:
        started = time.perf_counter()
        headers = request.headers
        model_id, user_id, request_id = _ids(
            headers.get(hd.MODEL_HEADER), headers.get(hd.USER_HEADER),
            headers.get(hd.REQUEST_ID_HEADER),
        )  # fmt: skip
        timeout = self._timeout(headers.get(hd.DEADLINE_HEADER), headers.get(hd.TIMEOUT_HEADER))
        raw_length = headers.get("content-length")
        if raw_length is None:
            raise HostError(411, "length_required", "send the sealed input with a Content-Length")
        try:
            length = int(raw_length)
        except ValueError:
            raise bad_request(f"Content-Length has value {raw_length!r}") from None
        if length > self.options.max_body_bytes:
            raise HostError(
                413,
                "payload_too_large",
                f"the sealed input is {length} bytes; the limit is {self.options.max_body_bytes}",
            )
        self._admit()
        try:
            meta = {
                "model_id": model_id,
                "user_id": user_id,
                "request_id": request_id,
                "timeout_s": round(timeout, 6),
            }
            # The body is read into private memory first, then put in the channel in one go:
            # a loan held open while a slow client sends would hold up the channel.  It grows
            # with the bytes that came (a declared length costs nothing until it is sent).
            sealed = bytearray()
            async for chunk in request.stream():
                sealed += chunk
                if len(sealed) > length:
                    raise bad_request("the body is longer than its Content-Length")
            if len(sealed) != length:
                raise bad_request("the body is shorter than its Content-Length")
            body_s = time.perf_counter() - started
            generation = await self._generation(timeout)
            future = await self._send(generation, wire.Op.INFER, meta, sealed, timeout)
            del sealed
            remaining = max(0.001, timeout - (time.perf_counter() - started))
            reply = await self._await_reply(generation, future, remaining)
            try:
                body = bytes(reply.payload)
                stages = _stages(reply.meta)
            finally:
                reply.release()
        finally:
            self._done()
        stages[timings.REQUEST_BODY] = round(body_s * 1000, 3)
        stages[timings.TOTAL] = round((time.perf_counter() - started) * 1000, 3)
        stages.update(self._take_cold_start(stages))
        self._served += 1
        self.metrics.observe("infer", "ok", stages)
        return Response(
            body,
            media_type="application/octet-stream",
            headers={
                hd.SERVER_TIMING_HEADER: hd.format_server_timing(stages),
                hd.REQUEST_ID_HEADER: request_id,
            },
        )

    def _authorize(self, request: Request) -> None:
        """The platform's control calls carry the control token; nothing else is read first."""
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, self._bearer):
            raise HostError(
                401,
                "unauthorized",
                "this call needs the instance's control token (Authorization: Bearer ...)",
            )

    async def _load(self, request: Request) -> Response:
        started = time.perf_counter()
        self._authorize(request)
        doc = await _json(request)
        model_id, user_id, _ = _ids(doc.get("model_id"), doc.get("user_id"), "load")
        timeout = self._timeout(doc.get("deadline"), doc.get("timeout_ms"))
        self._admit()
        try:
            reply = await self._call(
                wire.Op.LOAD,
                {"model_id": model_id, "user_id": user_id, "timeout_s": round(timeout, 6)},
                None,
                timeout,
            )
            stages = _stages(reply.meta)
            reply.release()
        finally:
            self._done()
        stages[timings.TOTAL] = round((time.perf_counter() - started) * 1000, 3)
        stages.update(self._take_cold_start(stages))
        self.metrics.observe("load", "ok", {})
        return _json_response({"model_id": model_id, "timings": stages})

    async def _evict(self, request: Request) -> Response:
        self._authorize(request)
        doc = await _json(request)
        model_id = doc.get("model_id")
        if not isinstance(model_id, str):
            raise bad_request("model_id must be a string")
        _model_id(model_id)
        reply = await self._call(
            wire.Op.EVICT, {"model_id": model_id}, None, self.options.default_timeout_s
        )
        evicted = reply.meta.get("evicted") is True
        reply.release()
        self.metrics.observe("evict", "ok", {})
        return _json_response({"model_id": model_id, "evicted": evicted})

    async def _stats(self, request: Request) -> Response:
        runtime: dict[str, Any] | None = None
        if self.supervisor.status is RuntimeStatus.READY:
            try:
                reply = await self._call(wire.Op.STATS, {}, None, 5.0)
                runtime = dict(reply.meta)
                reply.release()
                self._last_stats = runtime
            except SealserveError:
                runtime = None
        return _json_response(
            {
                "instance": {
                    "pid": os.getpid(),
                    "uptime_s": round(time.monotonic() - self._started, 3),
                    "initialized": self._initialized,
                    "in_flight": self._in_flight,
                    "concurrency": self.options.concurrency,
                    "served": self._served,
                },
                "supervisor": self.supervisor.describe(),
                "cold_start": self._last_cold_start,
                "runtime": runtime,
            }
        )

    def _stats_for_metrics(self) -> dict[str, Any] | None:
        """The runtime's stats for a scrape (blocking: the scrape runs in a thread)."""
        if self.supervisor.status is not RuntimeStatus.READY:
            return None
        try:
            reply = self.supervisor.call(wire.Op.STATS, {}, timeout=2.0)
        except SealserveError:
            return self._last_stats
        stats = dict(reply.meta)
        reply.release()
        self._last_stats = stats
        return stats

    # -- the OpenWhisk action contract ---------------------------------------------------------

    async def _init(self, request: Request) -> Response:
        doc = await _json(request)
        with self._lock:
            if self._initialized:
                raise HostError(403, "already_initialized", "the action is already initialized")
            self._initialized = True
        value = doc.get("value")
        name = value.get("name") if isinstance(value, dict) else None
        _log.event("instance.initialized", action=name if isinstance(name, str) else None)
        self.metrics.observe("init", "ok", {})
        return _json_response({"ok": True})

    async def _run(self, request: Request) -> Response:
        started = time.perf_counter()
        if not self._initialized:
            raise HostError(409, "not_initialized", "POST /init before /run")
        doc = await _json(request, limit=self.options.max_body_bytes * 4 // 3 + _JSON_LIMIT)
        value = doc.get("value")
        if not isinstance(value, dict):
            raise bad_request("value must be an object")
        activation_id = doc.get("activation_id")
        model_id, user_id, request_id = _ids(
            value.get("model_id"), value.get("user_id"), value.get("request_id")
        )
        timeout = self._timeout(doc.get("deadline"), value.get("timeout_ms"))
        raw = value.get("input")
        if not isinstance(raw, str):
            raise bad_request("value.input must be the sealed input in base64")
        try:
            sealed = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("value.input is not valid base64") from None
        if len(sealed) > self.options.max_body_bytes:
            raise HostError(413, "payload_too_large", "the sealed input is over the limit")
        self._admit()
        try:
            meta = {
                "model_id": model_id,
                "user_id": user_id,
                "request_id": request_id,
                "timeout_s": round(timeout, 6),
            }
            reply = await self._call(wire.Op.INFER, meta, sealed, timeout)
            try:
                output = base64.b64encode(reply.payload).decode("ascii")
                stages = _stages(reply.meta)
            finally:
                reply.release()
        finally:
            self._done()
        stages[timings.TOTAL] = round((time.perf_counter() - started) * 1000, 3)
        stages.update(self._take_cold_start(stages))
        self._served += 1
        self.metrics.observe("run", "ok", stages)
        return _json_response(
            {
                "output": output,
                "request_id": request_id,
                "activation_id": activation_id if isinstance(activation_id, str) else None,
                "timings": stages,
            }
        )

    # -- health and metrics --------------------------------------------------------------------

    def _live_check(self) -> str | None:
        if self.supervisor.status is RuntimeStatus.FAILED:
            return "the runtime failed and will not be restarted: replace the instance"
        return None

    def _ready_check(self) -> str | None:
        if self.supervisor.status is RuntimeStatus.READY:
            return None
        return f"the runtime is {self.supervisor.health}"

    async def _health_probe(self, request: Request) -> Response:
        answer = self.health.answer(request.url.path)
        assert answer is not None
        return Response(
            answer.body,
            status_code=answer.status,
            media_type="application/json",
            headers=answer.headers,
        )

    async def _healthz(self, request: Request) -> Response:
        status, health = self.supervisor.status, self.supervisor.health
        doc = {"status": "ok" if status is RuntimeStatus.READY else health}
        doc.update({"runtime": health})
        if status is RuntimeStatus.READY:
            return _json_response(doc)
        headers = {} if status is RuntimeStatus.FAILED else {"retry-after": "1"}
        return _json_response(doc, status=503, headers=headers)

    async def _metrics(self, request: Request) -> Response:
        data = await asyncio.to_thread(generate_latest, self.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)


# -- helpers ---------------------------------------------------------------------------------


def _marker() -> None:
    line = (ACTIVATION_MARKER + "\n").encode("ascii")
    for fd in (1, 2):
        try:
            os.write(fd, line)
        except OSError:
            continue


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise bad_request(f"{name} has value {value!r}; not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise bad_request(f"{name} has value {value!r}; not a number") from None


def _model_id(value: Any) -> str:
    try:
        split_model_id(value)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return str(value)


def _ids(model_id: Any, user_id: Any, request_id: Any) -> tuple[str, str, str]:
    if model_id is None:
        raise bad_request(f"the model id is missing (header {hd.MODEL_HEADER})")
    if not isinstance(user_id, str) or not _PRINCIPAL.fullmatch(user_id):
        raise bad_request(f"the user id must be 64 hex digits, got {user_id!r}")
    if not isinstance(request_id, str):
        raise bad_request(f"the request id is missing (header {hd.REQUEST_ID_HEADER})")
    try:
        check_request_id(request_id)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return _model_id(model_id), user_id, request_id


def _stages(meta: Mapping[str, Any]) -> dict[str, float]:
    raw = meta.get("timings")
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if k in timings.STAGES and isinstance(v, int | float) and not isinstance(v, bool)
    }


async def _json(request: Request, *, limit: int = _JSON_LIMIT) -> dict[str, Any]:
    raw_length = request.headers.get("content-length")
    if raw_length is not None and raw_length.isdigit() and int(raw_length) > limit:
        raise HostError(413, "payload_too_large", f"the body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HostError(413, "payload_too_large", f"the body is over {limit} bytes")
    if not body:
        return {}
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise bad_request("the body must be a JSON object")
    return doc


def _json_response(
    doc: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )
