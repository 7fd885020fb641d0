"""Every operation of the KeyService's HTTP API, once, transport-free: bytes in, an answer out.

There is one request path: each operation below parses its typed body
(:mod:`sealserve.protocol`), authenticates and limits the caller, calls the service (whose
methods return typed answers), maps a refusal to its status, signs the answer to a signed
request and counts it in the metrics.  Two routers lead to it:

* the FastAPI application (:mod:`._app`) serves every route, validates path parameters,
  limits bodies and publishes the OpenAPI document built from the same typed bodies;
* :class:`~._hot.HotPath`, in front of it, routes the runtime's round trip (``POST
  /v1/challenges``, ``POST /v1/releases``), its revocation polls (``POST /v1/revocations``)
  and ``GET /healthz`` straight from the ASGI scope,
  because FastAPI's middleware, routing and request object cost more than the challenge
  itself (see :mod:`._hot` for the figures).

Both routers call the same method for the same route, so the document describes exactly what
is served; a test checks that both give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError

from sealserve._health import Health
from sealserve._log import get_logger
from sealserve._resource import ResourceState
from sealserve.errors import AuditLogTampered, Conflict, KeyServiceError, NotFound, RateLimited
from sealserve.keyservice._limits import Budget
from sealserve.keyservice._releaser import Denied
from sealserve.keyservice._service import KeyService
from sealserve.keyservice._store import PrincipalRow
from sealserve.protocol import (
    ChallengeOut,
    GrantIn,
    Message,
    ModelKeyIn,
    PrincipalIn,
    RequestKeyIn,
    wire,
)

__all__ = ["DENIAL", "Answer", "Endpoints", "SignedRequest", "error_response", "first_error"]

_log = get_logger(__name__)

#: Status, body and extra headers of an answer.
Answer = tuple[int, bytes, dict[str, str]]
#: The bytes of the fixed denial.
DENIAL: Final = wire.canonical_json(wire.DENIAL_BODY)
_HEALTHY: Final = wire.canonical_json({"status": "ok"})


@dataclasses.dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request as its signature covers it: method, raw path and query, exact body, headers."""

    method: str
    path: str
    body: bytes
    headers: Mapping[str, str]


_Handler = Callable[[PrincipalRow, bytes], Awaitable[Message]]


class Endpoints:
    """The operations of the HTTP API over ``service`` (see the module docstring)."""

    def __init__(self, service: KeyService) -> None:
        self.service = service
        self._ttl_s = service.challenges.ttl_s
        #: Liveness and readiness (:mod:`sealserve._health`): ready while its store is open.
        self.health = Health(ready_checks=(self._store_open,))

    def _store_open(self) -> str | None:
        if self.service.store.state is not ResourceState.OPENED:
            return "the KeyService's store is closed"
        return None

    # -- the runtime's round trip and the probes --------------------------------------------

    def healthz(self) -> Answer:
        return 200, _HEALTHY, {}

    def probe(self, path: str) -> Answer | None:
        """The Open Inference Protocol's health answers (``None`` for any other path)."""
        answer = self.health.answer(path)
        if answer is None:
            return None
        return answer.status, answer.body, answer.headers

    def challenge(self) -> Answer:
        """A challenge: it has no budget (see :mod:`._limits`)."""
        started = time.perf_counter()
        service = self.service
        issued = service.challenge()
        content = ChallengeOut(
            nonce=issued.nonce, expires_at=issued.expires_at, ttl_s=self._ttl_s
        ).to_json()
        service.metrics.observe("challenge", 201, time.perf_counter() - started)
        return 201, content, {}

    async def release(self, body: bytes | None) -> Answer:
        """``body`` is ``None`` when it was larger than the limit (the fixed denial too)."""
        return await self._runtime_call("release", body, self.service.release)

    async def revocations(self, body: bytes | None) -> Answer:
        """A revocation poll; ``None`` (a body over the limit) is the fixed denial too."""
        return await self._runtime_call("revocations", body, self.service.revocations)

    async def replicas(self, body: bytes) -> Answer:
        """Another node's KeyService of this measurement asks for the master key."""
        return await self._unsigned("replicas", lambda: self.service.replicate(body))

    # -- unsigned ---------------------------------------------------------------------------

    async def attestation(self, nonce: str, client: str) -> Answer:
        """The service's evidence for ``nonce`` (base64url), limited per client address."""

        async def call() -> Message:
            self.service.limit(Budget.ATTESTATION, client)
            return await self.service.attestation(wire.b64decode(nonce, name="nonce"))

        return await self._unsigned("attestation", call)

    # -- plumbing for attested runtimes and unsigned requests -------------------------------

    async def _runtime_call(
        self, route: str, body: bytes | None, call: Callable[[bytes], Awaitable[Message]]
    ) -> Answer:
        """A runtime's request (evidence inside): every failure but a spent budget or the
        database is the one fixed denial, which says nothing of why."""
        started = time.perf_counter()
        service = self.service
        extra: dict[str, str]
        try:
            if body is None:
                raise Denied("malformed", size="over_limit")
            status, content, extra = 200, (await call(body)).to_json(), {}
        except Exception as exc:
            status, doc, extra = error_response(service, exc, route)
            if status not in (403, 429, 503):
                status, doc, extra = 403, wire.DENIAL_BODY, {}
            content = DENIAL if status == 403 else wire.canonical_json(doc)
        service.metrics.observe(route, status, time.perf_counter() - started)
        return status, content, extra

    async def _unsigned(self, route: str, call: Callable[[], Awaitable[Any]]) -> Answer:
        started = time.perf_counter()
        service = self.service
        out: Any
        extra: dict[str, str]
        try:
            status, out, extra = 200, await call(), {}
        except Exception as exc:
            status, out, extra = error_response(service, exc, route)
        service.metrics.observe(route, status, time.perf_counter() - started)
        return status, _encode(out), extra

    # -- signed -----------------------------------------------------------------------------

    async def register(self, request: SignedRequest, client: str) -> Answer:
        """Register the key that signs ``request`` (proof of possession) with its role."""
        started = time.perf_counter()
        service = self.service
        out: Any
        extra: dict[str, str]
        try:
            service.limit(Budget.REGISTRATION, client)
            doc = PrincipalIn.from_json(request.body)
            out = await service.register(
                public_key=doc.public_key,
                role=doc.role,
                method=request.method,
                path=request.path,
                body=request.body,
                headers=request.headers,
            )
            status, extra = 200, {}
        except Exception as exc:
            status, out, extra = error_response(service, exc, "register")
            if status == 400:  # unauthenticated: say nothing more than the denial
                status, out = 403, wire.DENIAL_BODY
        return self._signed_answer(request, "register", status, out, extra, started)

    async def put_model_key(self, request: SignedRequest, *, owner_id: str, name: str) -> Answer:
        async def handle(signer: PrincipalRow, body: bytes) -> Message:
            doc = ModelKeyIn.from_json(body)
            return await self.service.put_model_key(
                signer,
                owner_id=owner_id,
                name=name,
                version=doc.version,
                wrapped=doc.wrapped_key,
            )

        return await self._signed(request, "put_model_key", handle)

    async def model_info(self, request: SignedRequest, *, owner_id: str, name: str) -> Answer:
        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await self.service.model_info(signer, owner_id=owner_id, name=name)

        return await self._signed(request, "get_model", handle)

    async def grant(
        self, request: SignedRequest, *, owner_id: str, name: str, user_id: str
    ) -> Answer:
        async def handle(signer: PrincipalRow, body: bytes) -> Message:
            doc = GrantIn.from_json(body)
            return await self.service.grant(
                signer, owner_id=owner_id, name=name, user_id=user_id, policy=doc.policy
            )

        return await self._signed(request, "grant", handle)

    async def revoke(
        self, request: SignedRequest, *, owner_id: str, name: str, user_id: str
    ) -> Answer:
        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await self.service.revoke(signer, owner_id=owner_id, name=name, user_id=user_id)

        return await self._signed(request, "revoke", handle, budget=Budget.REVOCATION)

    async def audit(self, request: SignedRequest, *, after: int, limit: int) -> Answer:
        """The audit log after entry ``after`` (at most ``limit``), as the signer may see it."""

        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await self.service.audit(signer, after=after, limit=limit)

        return await self._signed(request, "audit", handle)

    async def put_request_key(
        self, request: SignedRequest, *, owner_id: str, name: str, user_id: str
    ) -> Answer:
        async def handle(signer: PrincipalRow, body: bytes) -> Message:
            doc = RequestKeyIn.from_json(body)
            return await self.service.put_request_key(
                signer,
                owner_id=owner_id,
                name=name,
                user_id=user_id,
                wrapped=doc.wrapped_key,
                policy=doc.policy,
            )

        return await self._signed(request, "put_request_key", handle)

    async def delete_request_key(
        self, request: SignedRequest, *, owner_id: str, name: str, user_id: str
    ) -> Answer:
        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await self.service.delete_request_key(
                signer, owner_id=owner_id, name=name, user_id=user_id
            )

        return await self._signed(request, "delete_request_key", handle, budget=Budget.REVOCATION)

    # -- plumbing for signed requests ---------------------------------------------------------

    async def _signed(
        self,
        request: SignedRequest,
        route: str,
        handler: _Handler,
        *,
        budget: Budget = Budget.SIGNED,
    ) -> Answer:
        started = time.perf_counter()
        service = self.service
        out: Any
        extra: dict[str, str]
        try:
            signer = await service.authenticate(
                method=request.method,
                path=request.path,
                body=request.body,
                headers=request.headers,
                budget=budget,
            )
            status, out, extra = 200, await handler(signer, request.body), {}
        except Exception as exc:  # mapped to a status, or re-raised
            status, out, extra = error_response(service, exc, route)
        return self._signed_answer(request, route, status, out, extra, started)

    def _signed_answer(
        self,
        request: SignedRequest,
        route: str,
        status: int,
        out: Any,
        extra: dict[str, str],
        started: float,
    ) -> Answer:
        """Sign the answer to ``request`` (the request it answers, the status and the body)."""
        content = _encode(out)
        payload = wire.response_signing_payload(
            method=request.method,
            path=request.path,
            request_tag=wire.request_tag(dict(request.headers)),
            status=status,
            body=content,
        )
        extra[wire.RESPONSE_SIGNATURE_HEADER] = wire.b64encode(self.service.sign(payload))
        self.service.metrics.observe(route, status, time.perf_counter() - started)
        return status, content, extra


def _encode(body: Any) -> bytes:
    """An answer's bytes: a typed body's canonical JSON (or a plain JSON value's)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, Message):
        return body.to_json()
    return wire.canonical_json(body)


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
