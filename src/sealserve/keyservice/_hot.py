"""The runtime-facing endpoints as plain ASGI: health, challenges, releases, revocation polls.

These carry the key-release round trip (a challenge, then a release), the runtimes' revocation
polls and the health probe, hundreds of times a second.  :class:`HotPath` answers them straight
from the ASGI scope: no middleware stack, routing table, dependency solving or request object,
which cost more than half of a challenge's server time.  Every other request goes to the
FastAPI application (:mod:`._app`), whose routes for these paths call the same
:class:`HotEndpoints`, so the OpenAPI document describes exactly what is served (and a test
checks that both paths give the same bytes).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from sealserve._health import Health
from sealserve._log import get_logger
from sealserve._resource import ResourceState
from sealserve.errors import AuditLogTampered, Conflict, KeyServiceError, NotFound, RateLimited
from sealserve.keyservice._releaser import Denied
from sealserve.keyservice._service import KeyService
from sealserve.protocol import ChallengeOut, wire

__all__ = [
    "HEALTHZ_PATH",
    "HotEndpoints",
    "HotPath",
    "HotResponse",
    "error_response",
    "first_error",
]

_log = get_logger(__name__)

HEALTHZ_PATH: Final = "/healthz"
_CHALLENGES: Final = wire.API_PREFIX + "/challenges"
_RELEASES: Final = wire.API_PREFIX + "/releases"
_REVOCATIONS: Final = wire.API_PREFIX + "/revocations"
DENIAL: Final = wire.canonical_json(wire.DENIAL_BODY)
_HEALTHY: Final = wire.canonical_json({"status": "ok"})
_JSON: Final = (b"content-type", b"application/json")

#: Status, body and extra headers of an answer.
HotResponse = tuple[int, bytes, dict[str, str]]


class HotEndpoints:
    """What the endpoints answer, transport-free: bytes in, status and bytes out."""

    def __init__(self, service: KeyService) -> None:
        self._service = service
        self._ttl_s = service.challenges.ttl_s
        #: Liveness and readiness (:mod:`sealserve._health`): ready while its store is open.
        self.health = Health(ready_checks=(self._store_open,))

    def _store_open(self) -> str | None:
        if self._service.store.state is not ResourceState.OPENED:
            return "the KeyService's store is closed"
        return None

    def healthz(self) -> HotResponse:
        return 200, _HEALTHY, {}

    def probe(self, path: str) -> HotResponse | None:
        """The Open Inference Protocol's health answers (``None`` for any other path)."""
        answer = self.health.answer(path)
        if answer is None:
            return None
        return answer.status, answer.body, answer.headers

    def challenge(self) -> HotResponse:
        """A challenge: it has no budget (see :mod:`._limits`)."""
        started = time.perf_counter()
        service = self._service
        issued = service.challenge()
        content = ChallengeOut(
            nonce=wire.b64encode(issued.nonce), expires_at=issued.expires_at, ttl_s=self._ttl_s
        ).to_json()
        service.metrics.observe("challenge", 201, time.perf_counter() - started)
        return 201, content, {}

    async def release(self, body: bytes | None) -> HotResponse:
        """``body`` is ``None`` when it was larger than the limit (the fixed denial too)."""
        started = time.perf_counter()
        service = self._service
        try:
            if body is None:
                raise Denied("malformed", size="over_limit")
            out = await service.release(body)
        except Exception as exc:
            status, doc, extra = error_response(service, exc, "release")
            if status not in (403, 429, 503):  # every other failure is the fixed denial too
                status, doc, extra = 403, wire.DENIAL_BODY, {}
            content = DENIAL if status == 403 else wire.canonical_json(doc)
            service.metrics.observe("release", status, time.perf_counter() - started)
            return status, content, extra
        content = out.to_json()
        service.metrics.observe("release", 200, time.perf_counter() - started)
        return 200, content, {}

    async def revocations(self, body: bytes | None) -> HotResponse:
        """A revocation poll; ``None`` (a body over the limit) and every failure but a spent
        budget or the database are the fixed denial."""
        started = time.perf_counter()
        service = self._service
        try:
            if body is None:
                raise Denied("malformed", size="over_limit")
            out = await service.revocations(body)
        except Exception as exc:
            status, doc, extra = error_response(service, exc, "revocations")
            if status not in (403, 429, 503):
                status, doc, extra = 403, wire.DENIAL_BODY, {}
            content = DENIAL if status == 403 else wire.canonical_json(doc)
            service.metrics.observe("revocations", status, time.perf_counter() - started)
            return status, content, extra
        service.metrics.observe("revocations", 200, time.perf_counter() - started)
        return 200, out.to_json(), {}


class HotPath:
    """ASGI: these endpoints directly, everything else to ``fallback``.

    Bodies over ``max_body_bytes`` are refused by their Content-Length before they are read,
    or as soon as the bytes read pass the limit: on these paths with the fixed denial.
    """

    def __init__(self, endpoints: HotEndpoints, fallback: ASGIApp, *, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
        self.endpoints = endpoints
        self.fallback = fallback
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            try:
                if path == _RELEASES and method == "POST":
                    body = await _read_body(scope, receive, self._limit)
                    await _send(send, await self.endpoints.release(body))
                    return
                if path == _REVOCATIONS and method == "POST":
                    body = await _read_body(scope, receive, self._limit)
                    await _send(send, await self.endpoints.revocations(body))
                    return
                if path == _CHALLENGES and method == "POST":
                    if await _read_body(scope, receive, self._limit) is None:
                        await _send(send, (403, DENIAL, {}))
                    else:
                        await _send(send, self.endpoints.challenge())
                    return
            except _Disconnected:
                return
            if method == "GET":
                if path == HEALTHZ_PATH:
                    await _send(send, self.endpoints.healthz())
                    return
                probe = self.endpoints.probe(path)
                if probe is not None:
                    await _send(send, probe)
                    return
        await self.fallback(scope, receive, send)


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body; ``None`` when it is over ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                return None
    chunks: list[bytes] = []
    size = 0
    while True:  # bounded: the server delivers a finite body, and we stop past the limit
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, answer: HotResponse) -> None:
    status, content, extra = answer
    headers = [_JSON, (b"content-length", str(len(content)).encode())]
    for name, value in extra.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def error_response(
    service: KeyService, exc: BaseException, route: str
) -> tuple[int, Any, dict[str, str]]:
    """Status, body and headers for an exception; unexpected ones propagate."""
    if isinstance(exc, Denied):
        service.metrics.deny(exc.reason)
        _log.event(
            "request.denied", level=logging.DEBUG, route=route, reason=exc.reason, **exc.detail
        )
        return 403, wire.DENIAL_BODY, {}
    if isinstance(exc, RateLimited):
        retry = str(max(1, math.ceil(getattr(exc, "retry_after_s", 1.0))))
        return 429, {"error": str(exc)}, {"Retry-After": retry}
    if isinstance(exc, NotFound):
        return 404, {"error": str(exc)}, {}
    if isinstance(exc, Conflict):
        return 409, {"error": str(exc)}, {}
    if isinstance(exc, ValueError | json.JSONDecodeError):
        return 400, {"error": str(exc)}, {}
    if isinstance(exc, AuditLogTampered):  # the log says what; the database is not trusted
        return 500, {"error": str(exc)}, {}
    if isinstance(exc, SQLAlchemyError | KeyServiceError):
        _log.event(
            "request.storage_error", level=logging.ERROR, route=route, error=type(exc).__name__
        )
        return (
            503,
            {"error": "the KeyService's database is unavailable; retry later"},
            {"Retry-After": "1"},
        )
    raise exc


def first_error(errors: Any) -> str:
    """``where: message`` of a validation error list's first entry."""
    try:
        first = errors[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return f"{where or 'body'}: {first.get('msg', 'invalid')}"
    except (IndexError, TypeError, AttributeError):
        return "invalid request"
