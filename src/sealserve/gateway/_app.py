"""The public inference API: sealed envelopes in, sealed envelopes out.

* ``POST /v1/models/{owner_id}/{name}:infer`` — body: the sealed input (binary,
  ``application/octet-stream``, with a ``Content-Length``); headers: the user id, the request
  id (both bound in the envelopes) and optionally a deadline.  Answer: the sealed output, the
  stage timings in ``Server-Timing``, the routing decision in ``x-sealserve-decision*``;
* ``GET /v1/models`` — the stored models (ids, sizes, key versions; nothing secret);
  ``GET /v1/models/{owner_id}/{name}`` — one of them;
* the model upload API (``/v1/uploads``, ``DELETE /v1/models/{owner_id}/{name}``) when an
  :class:`~sealserve.gateway.UploadService` is given: owners stream sealed models in signed
  chunks (:mod:`._uploads`);
* ``GET /v1/platform`` — instances, meters, counters and recent routing decisions;
* ``GET /healthz``, the Open Inference Protocol's ``GET /v2/health/live`` and
  ``/v2/health/ready`` (:mod:`sealserve._health`), ``GET /metrics``, ``GET /openapi.json``;
* ``GET /v1/prometheus/targets`` — every service to scrape, in Prometheus's HTTP service
  discovery format (the gateway, the KeyService, the instances alive now);
* with ``web`` on, the browser client under ``/web/`` (:mod:`._web`, docs/web.md).

The gateway never holds a key: it checks ids, sizes and deadlines, refuses what it cannot
serve (unknown model, too large, too many requests), hands the envelope to the platform and
relays the answer, including retryable failures as retryable (503 or 429 with
``Retry-After``).  See docs/http-api.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._health import LIVE_PATH, READY_PATH, Health
from sealserve._log import get_logger
from sealserve.config import GatewaySettings
from sealserve.errors import DeadlineExceeded, ModelNotStored
from sealserve.gateway._errors import error_for, too_many_requests, unknown_model
from sealserve.gateway._http import (
    BodyReader,
    HttpLimits,
    LeanHandler,
    LeanResponse,
    LeanRoute,
    RequestHead,
)
from sealserve.gateway._metrics import GatewayMetrics
from sealserve.gateway._openapi import openapi_document
from sealserve.gateway._uploads import ROUTES as UPLOAD_ROUTES
from sealserve.gateway._uploads import UploadRequest, UploadService
from sealserve.gateway._web import WebAssets
from sealserve.instance import ModelManifest
from sealserve.platform import PlatformResult, PlatformStats
from sealserve.protocol import (
    HostError,
    StoredModel,
    check_request_id,
    error_body,
    split_model_id,
)
from sealserve.protocol import headers as hd

__all__ = [
    "BodySource",
    "ScrapeTarget",
    "Gateway",
    "GatewayOptions",
    "InferAnswer",
    "InferenceBackend",
    "ModelDirectory",
]

_log = get_logger(__name__)
_PRINCIPAL = re.compile(r"[0-9a-f]{64}")
_OCTETS: Final = "application/octet-stream"
#: The inference route, as the lean server matches it (Starlette's route says the same).
_INFER_PATH: Final = re.compile(r"/v1/models/(?P<owner_id>[^/]+)/(?P<name>[^/]+):infer")


@dataclasses.dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """A service for Prometheus to scrape at ``url`` (its ``/metrics``), with labels."""

    service: str
    url: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """One target group of Prometheus's HTTP service discovery (``__scheme__`` says
        whether to scrape with TLS)."""
        parts = urllib.parse.urlsplit(self.url)
        labels = {"sealserve_service": self.service, "__scheme__": parts.scheme or "http"}
        labels.update(self.labels)
        return {"targets": [parts.netloc], "labels": labels}


class BodySource(Protocol):
    """Reads a request's whole body once its head is accepted: exactly the Content-Length,
    which is ``limit``; ``ValueError`` if the body cannot be that."""

    def __call__(self, *, limit: int) -> Awaitable[bytes | bytearray]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class InferAnswer:
    """An inference answer (a success or an error), whichever server sends it."""

    status: int
    headers: Mapping[str, str]
    body: bytes | bytearray | memoryview


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewayOptions:
    """Limits of the public API (the ``[gateway]`` settings)."""

    #: Largest sealed input accepted.
    max_body_bytes: int = 64 << 20
    #: Deadline of a request that names none.
    default_timeout_s: float = 60.0
    #: Longest deadline a request may ask for.
    max_timeout_s: float = 600.0
    #: Requests the gateway holds at once (reading, waiting, running); more get 429.
    max_queued: int = 256
    #: Serve the browser client under ``/web/`` (:mod:`._web`).
    web: bool = False
    #: What one connection, one client address and all bodies may hold (the lean server's).
    http: HttpLimits = dataclasses.field(default_factory=HttpLimits)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_queued"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("default_timeout_s", "max_timeout_s"):
            value = getattr(self, name)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.http.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"http.max_body_bytes_in_flight ({self.http.max_body_bytes_in_flight!r}) must "
                f"be at least max_body_bytes ({self.max_body_bytes!r})"
            )
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError(
                f"default_timeout_s ({self.default_timeout_s!r}) must not exceed "
                f"max_timeout_s ({self.max_timeout_s!r})"
            )

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> GatewayOptions:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            default_timeout_s=settings.request_timeout_s,
            max_timeout_s=max(600.0, settings.request_timeout_s),
            max_queued=settings.max_queued,
            web=settings.web,
            http=HttpLimits(
                body_idle_s=settings.body_timeout_s,
                min_body_rate=settings.min_body_rate,
                max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
                max_connections_per_source=settings.max_connections_per_source,
            ),
        )


class InferenceBackend(Protocol):
    """What the gateway needs of the platform (:class:`~sealserve.platform.Platform` is one)."""

    async def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray,
        deadline_s: float,
    ) -> PlatformResult: ...

    def stats(self) -> PlatformStats: ...

    @property
    def policy(self) -> str:
        """The routing policy's name."""
        ...


class ModelDirectory(Protocol):
    """What the gateway needs of the model store (:class:`~sealserve.platform.ModelCatalog`)."""

    def get(self, model_id: str) -> ModelManifest: ...

    def list(self) -> list[ModelManifest]: ...


class Gateway:
    """The gateway's HTTP application over a platform and a model directory."""

    def __init__(
        self,
        platform: InferenceBackend,
        models: ModelDirectory,
        *,
        options: GatewayOptions | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        uploads: UploadService | None = None,
        health: Health | None = None,
        scrape_targets: Callable[[], Sequence[ScrapeTarget]] | None = None,
    ) -> None:
        self.platform = platform
        self.uploads = uploads
        self._started = False
        self._draining = False
        #: Liveness and readiness: not ready before startup and once draining, then whatever
        #: else ``health`` checks (the platform, say).
        checks = (self._serving_check, self._saturation_check)
        self.health = Health(ready_checks=checks)
        if health is not None:
            self.health = Health(
                live_checks=health.live_checks,
                ready_checks=(*checks, *health.ready_checks),
            )
        self._scrape_targets = scrape_targets
        self.models = models
        self.options = options or GatewayOptions()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self._clock = clock
        self._inside = 0
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self.app = Starlette(
            routes=[
                Route(
                    "/v1/models/{owner_id}/{name}:infer",
                    self._endpoint(self._infer),
                    methods=["POST"],
                ),
                Route("/v1/models", self._endpoint(self._list_models), methods=["GET"]),
                Route(
                    "/v1/models/{owner_id}/{name}",
                    self._endpoint(self._get_model),
                    methods=["GET"],
                ),
                *self._upload_routes(),
                Route("/v1/platform", self._endpoint(self._platform), methods=["GET"]),
                Route("/healthz", self._healthz, methods=["GET"]),
                Route(LIVE_PATH, self._health_probe, methods=["GET"]),
                Route(READY_PATH, self._health_probe, methods=["GET"]),
                Route("/v1/prometheus/targets", self._targets, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/openapi.json", self._openapi, methods=["GET"]),
                *(WebAssets.load().routes() if self.options.web else []),
            ],
            lifespan=_lifespan(self),
        )

    async def startup(self) -> None:
        """Run the startup hook (the server calls it before it accepts connections)."""
        if self._on_startup is not None:
            await self._on_startup()
        self._started = True

    def drain(self) -> None:
        """The server is stopping: readiness fails from now on (requests in progress end)."""
        self._draining = True

    async def shutdown(self) -> None:
        """Run the shutdown hook (the server calls it once it stopped serving)."""
        self._draining = True
        if self._on_shutdown is not None:
            await self._on_shutdown()

    def _saturation_check(self) -> str | None:
        """Not ready while every request slot is held: new requests would get 429."""
        if self._inside >= self.options.max_queued:
            return f"saturated: {self._inside} of {self.options.max_queued} requests held"
        return None

    def _serving_check(self) -> str | None:
        if self._draining:
            return "the gateway is stopping"
        if not self._started:
            return "the gateway is starting"
        return None

    # -- plumbing ------------------------------------------------------------------------------

    def _endpoint(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                error = error_for(exc)
                level = logging.ERROR if error.status == 500 else logging.INFO
                _log.event(
                    "gateway.error",
                    level=level,
                    path=request.url.path,
                    code=error.code,
                    error=type(exc).__name__,
                )
                return _error_response(error)

        return endpoint

    # -- inference -----------------------------------------------------------------------------

    def lean_routes(self) -> list[LeanRoute]:
        """The routes :class:`~sealserve.gateway.GatewayServer` serves without ASGI: inference
        (the same answers as the Starlette route, with the body read straight into one
        buffer)."""
        routes = [LeanRoute("POST", _INFER_PATH, self._lean_infer)]
        if self.uploads is not None:
            for method, pattern, name in UPLOAD_ROUTES:
                routes.append(LeanRoute(method, pattern, self._lean_upload(name)))
        return routes

    # -- uploads -------------------------------------------------------------------------------

    def _lean_upload(self, name: str) -> LeanHandler:
        async def handler(
            head: RequestHead, params: Mapping[str, str], body: BodyReader
        ) -> LeanResponse:
            assert self.uploads is not None
            target = f"{head.path}?{head.query}" if head.query else head.path
            request = UploadRequest(
                head.method, target, head.query, head.headers, params, body.read
            )
            answer = await self.uploads.handle(name, request)
            return LeanResponse(answer.status, answer.headers, answer.body)

        return handler

    def _upload_routes(self) -> list[Route]:
        """The upload API for ASGI servers (the lean server serves it without ASGI)."""
        if self.uploads is None:
            return []
        paths = {
            "create": "/v1/uploads",
            "status": "/v1/uploads/{upload_id}",
            "chunk": "/v1/uploads/{upload_id}",
            "abort": "/v1/uploads/{upload_id}",
            "commit": "/v1/uploads/{upload_id}:commit",
            "delete_model": "/v1/models/{owner_id}/{name}",
        }
        routes = []
        for method, pattern, name in UPLOAD_ROUTES:

            async def endpoint(
                request: Request, name: str = name, pattern: re.Pattern[str] = pattern
            ) -> Response:
                assert self.uploads is not None
                match = pattern.fullmatch(request.url.path)
                if match is None:
                    return _error_response(HostError(404, "not_found", "no such route"))

                async def read(*, limit: int) -> bytes:
                    return await _read_body(request, limit)

                query = request.url.query
                target = f"{request.url.path}?{query}" if query else request.url.path
                upload = UploadRequest(
                    request.method, target, query, request.headers, match.groupdict(), read
                )
                answer = await self.uploads.handle(name, upload)
                return Response(answer.body, status_code=answer.status, headers=answer.headers)

            routes.append(Route(paths[name], endpoint, methods=[method]))
        return routes

    async def _lean_infer(
        self, head: RequestHead, params: Mapping[str, str], body: BodyReader
    ) -> LeanResponse:
        answer = await self.handle_infer(
            params["owner_id"], params["name"], head.headers, body.read, path=head.path
        )
        return LeanResponse(answer.status, answer.headers, answer.body)

    async def _infer(self, request: Request) -> Response:
        async def read(*, limit: int) -> bytes:
            return await _read_body(request, limit)

        answer = await self.handle_infer(
            request.path_params["owner_id"],
            request.path_params["name"],
            request.headers,
            read,
            path=request.url.path,
        )
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    async def handle_infer(
        self,
        owner_id: str,
        name: str,
        headers: Mapping[str, str],
        read_body: BodySource,
        *,
        path: str = "",
    ) -> InferAnswer:
        """One inference request, whichever server parsed it: checks the head, reads the body
        (``read_body(limit=...)``, only once the head is accepted), routes it, and answers
        (an error is an answer too, never an exception)."""
        started = time.perf_counter()
        if self._inside >= self.options.max_queued:
            self.metrics.requests.labels(code="too_many_requests").inc()
            return self._error_answer(too_many_requests(self.options.max_queued), path)
        self._inside += 1
        self.metrics.in_flight.set(self._inside)
        code = "internal"
        try:
            answer = await self._serve(owner_id, name, headers, read_body, started)
            code = "ok"
            return answer
        except Exception as exc:
            code = error_for(exc).code
            return self._error_answer(exc, path)
        finally:
            self._inside -= 1
            self.metrics.in_flight.set(self._inside)
            self.metrics.requests.labels(code=code).inc()
            self.metrics.seconds.labels(code=code).observe(time.perf_counter() - started)

    def _error_answer(self, exc: Exception, path: str) -> InferAnswer:
        error = error_for(exc)
        if not isinstance(exc, HostError) or error.status >= 500:
            level = logging.ERROR if error.status == 500 else logging.INFO
            _log.event("gateway.error", level=level, path=path, code=error.code,
                       error=type(exc).__name__)  # fmt: skip
        headers = {"content-type": "application/json", **error.headers()}
        return InferAnswer(error.status, headers, error_body(error))

    async def _serve(
        self,
        owner_id: str,
        name: str,
        headers: Mapping[str, str],
        read_body: BodySource,
        started: float,
    ) -> InferAnswer:
        model_id = f"{owner_id}/{name}"
        try:
            split_model_id(model_id)
        except ValueError as exc:
            raise HostError(400, "bad_request", str(exc)) from None
        user_id = headers.get(hd.USER_HEADER)
        if user_id is None or not _PRINCIPAL.fullmatch(user_id):
            raise HostError(
                400, "bad_request", f"{hd.USER_HEADER} must be 64 hex digits, got {user_id!r}"
            )
        request_id = headers.get(hd.REQUEST_ID_HEADER)
        if request_id is None:
            raise HostError(
                400, "bad_request", f"the request id is missing ({hd.REQUEST_ID_HEADER})"
            )
        try:
            check_request_id(request_id)
        except ValueError as exc:
            raise HostError(400, "bad_request", str(exc)) from None
        deadline_s = self._deadline(headers.get(hd.DEADLINE_HEADER), headers.get(hd.TIMEOUT_HEADER))
        length = self._content_length(headers.get("content-length"))
        try:
            self.models.get(model_id)
        except ModelNotStored:
            raise unknown_model(model_id) from None
        try:
            sealed = await read_body(limit=length)
        except ValueError as exc:
            raise HostError(400, "bad_request", str(exc)) from None
        if len(sealed) != length:
            raise HostError(400, "bad_request", "the body is shorter than its Content-Length")
        body_ms = (time.perf_counter() - started) * 1000
        self.metrics.body_bytes.observe(length)
        result = await self.platform.infer(
            model_id=model_id,
            user_id=user_id,
            request_id=request_id,
            sealed_input=sealed,
            deadline_s=deadline_s,
        )
        del sealed
        stages = dict(result.timings)
        stages["gateway_body"] = body_ms
        stages["gateway"] = (time.perf_counter() - started) * 1000
        out = {
            "content-type": _OCTETS,
            hd.REQUEST_ID_HEADER: request_id,
            hd.SERVER_TIMING_HEADER: hd.format_server_timing(stages),
            hd.INSTANCE_HEADER: str(result.instance_id),
        }
        decision = result.decision
        if decision is not None:
            info = hd.RouteInfo(
                kind=decision.kind,
                instance_id=decision.instance_id,
                load=decision.load,
                cold_start=decision.cold_start,
                evicted=len(decision.evict),
                waits=decision.waits,
                reason=decision.reason,
                policy=self.platform.policy,
            )
            out[hd.DECISION_HEADER] = info.to_header()
            out[hd.REASON_HEADER] = hd.ascii_header(decision.reason)
        out[hd.POLICY_HEADER] = self.platform.policy
        return InferAnswer(200, out, result.sealed_output)

    def _deadline(self, deadline_ms: str | None, timeout_ms: str | None) -> float:
        """The request's deadline (Unix seconds), within ``max_timeout_s`` from now."""
        now = self._clock.time()
        if deadline_ms:
            remaining = _number(hd.DEADLINE_HEADER, deadline_ms) / 1000.0 - now
        elif timeout_ms:
            remaining = _number(hd.TIMEOUT_HEADER, timeout_ms) / 1000.0
        else:
            remaining = self.options.default_timeout_s
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline had passed when it arrived")
        return now + min(remaining, self.options.max_timeout_s)

    def _content_length(self, raw: str | None) -> int:
        if raw is None:
            raise HostError(411, "length_required", "send the sealed input with a Content-Length")
        try:
            length = int(raw)
        except ValueError:
            raise HostError(400, "bad_request", f"Content-Length has value {raw!r}") from None
        if length < 1:
            raise HostError(400, "bad_request", "the body is empty; send the sealed input")
        if length > self.options.max_body_bytes:
            raise HostError(
                413,
                "payload_too_large",
                f"the sealed input is {length} bytes; the limit is {self.options.max_body_bytes}",
            )
        return length

    # -- the rest ------------------------------------------------------------------------------

    async def _list_models(self, request: Request) -> Response:
        models = [
            {
                "model_id": m.model_id,
                "owner_id": m.model_id.split("/", 1)[0],
                "name": m.model_id.split("/", 1)[1],
                "size": m.size,
                "key_version": m.key_version,
                "digest": f"sha256:{m.digest}",
                "stored_at": m.stored_at,
            }
            for m in self.models.list()
        ]
        return JSONResponse({"models": models})

    async def _get_model(self, request: Request) -> Response:
        model_id = f"{request.path_params['owner_id']}/{request.path_params['name']}"
        try:
            owner_id, name = split_model_id(model_id)
        except ValueError as exc:
            raise HostError(400, "bad_request", str(exc)) from None
        try:
            m = self.models.get(model_id)
        except ModelNotStored:
            raise unknown_model(model_id) from None
        doc = StoredModel(
            model_id=m.model_id,
            owner_id=owner_id,
            name=name,
            size=m.size,
            key_version=m.key_version,
            digest=f"sha256:{m.digest}",
            stored_at=m.stored_at,
        )
        return Response(doc.to_json(), media_type="application/json")

    async def _platform(self, request: Request) -> Response:
        raw = request.query_params.get("recent", "32")
        try:
            recent = max(0, int(raw))
        except ValueError:
            raise HostError(400, "bad_request", f"recent has value {raw!r}; not an int") from None
        return JSONResponse(self.platform.stats().to_json(recent=recent))

    async def _healthz(self, request: Request) -> Response:
        if self._saturation_check() is not None:  # alive, but new requests would get 429
            return JSONResponse(
                {
                    "status": "saturated",
                    "held": self._inside,
                    "max_queued": self.options.max_queued,
                },
                status_code=503,
                headers={"retry-after": "1"},
            )
        return JSONResponse({"status": "ok"})

    async def _health_probe(self, request: Request) -> Response:
        answer = self.health.answer(request.url.path)
        assert answer is not None
        return Response(
            answer.body,
            status_code=answer.status,
            media_type="application/json",
            headers=answer.headers,
        )

    async def _targets(self, request: Request) -> Response:
        """Prometheus's HTTP service discovery: one group per service to scrape."""
        targets = list(self._scrape_targets()) if self._scrape_targets is not None else []
        return JSONResponse([t.to_json() for t in targets])

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def _openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


def _lifespan(
    gateway: Gateway,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    return lifespan


def _error_response(error: HostError) -> Response:
    return Response(
        error_body(error),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(),
    )


def _number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise HostError(400, "bad_request", f"{name} has value {value!r}; not a number") from None
    if not math.isfinite(number):
        raise HostError(400, "bad_request", f"{name} has value {value!r}; not a number")
    return number


async def _read_body(request: Request, length: int) -> bytes:
    """The body, exactly ``length`` bytes (the Content-Length), read into private memory
    (the Starlette route's body path; :class:`~._http.BodyReader` is the lean server's)."""
    body = bytearray(length)
    pos = 0
    async for chunk in request.stream():
        end = pos + len(chunk)
        if end > length:
            raise HostError(400, "bad_request", "the body is longer than its Content-Length")
        body[pos:end] = chunk
        pos = end
    if pos != length:
        raise HostError(400, "bad_request", "the body is shorter than its Content-Length")
    return bytes(body)
