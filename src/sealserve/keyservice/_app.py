"""The KeyService's HTTP API (FastAPI/Starlette), on top of :class:`KeyService`.

Handlers read the raw body (signatures cover the exact bytes) and parse it with the typed
bodies of :mod:`sealserve.protocol`, whose schemas also make the OpenAPI document at
``/openapi.json``; the service's methods return typed answers, written as canonical JSON.  Every
response to a signed request carries ``Sealserve-Response-Signature``: the KeyService's
attested Ed25519 key signs the request it answers, the status and the body, so a proxy cannot
fake an acknowledgement (say, of a revoke).

The runtime's round trip (``POST /v1/challenges``, ``POST /v1/releases``) and ``/healthz``
are answered in front of FastAPI by :class:`~._hot.HotPath`; their FastAPI routes call the same
code and give the OpenAPI document its description of them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from sealserve import __version__
from sealserve._health import LIVE_PATH, READY_PATH
from sealserve.keyservice._hot import (
    HEALTHZ_PATH,
    HotEndpoints,
    HotPath,
    HotResponse,
    error_response,
    first_error,
)
from sealserve.keyservice._limits import Budget
from sealserve.keyservice._replicas import REPLICAS_PATH
from sealserve.keyservice._service import KeyService
from sealserve.keyservice._store import PrincipalRow
from sealserve.protocol import (
    MODEL_NAME_PATTERN,
    PRINCIPAL_ID_PATTERN,
    AccessChange,
    AttestationOut,
    AuditPage,
    ChallengeOut,
    ErrorOut,
    GrantIn,
    Message,
    ModelInfo,
    ModelKeyIn,
    ModelKeyReceipt,
    PrincipalIn,
    PrincipalOut,
    ReleaseIn,
    ReleaseOut,
    ReplicaIn,
    ReplicaOut,
    RequestKeyIn,
    RequestKeyReceipt,
    RevocationPollIn,
    RevocationPollOut,
    wire,
)

__all__ = ["create_app"]

RESPONSE_SIGNATURE_HEADER = wire.RESPONSE_SIGNATURE_HEADER
_DENIAL = wire.canonical_json(wire.DENIAL_BODY)
_UNSIGNED_FIXED_PATHS = (
    wire.API_PREFIX + "/releases",
    wire.API_PREFIX + "/challenges",
    wire.API_PREFIX + "/revocations",
    REPLICAS_PATH,
)

_P_OWNER = Path(pattern=PRINCIPAL_ID_PATTERN, description="The owner's principal id.")
_P_NAME = Path(pattern=MODEL_NAME_PATTERN, description="The model's name.")
_P_USER = Path(pattern=PRINCIPAL_ID_PATTERN, description="The user's principal id.")

#: Every body the OpenAPI document describes (with the bodies they nest).
_BODIES: tuple[type[Message], ...] = (
    AccessChange,
    AuditPage,
    AttestationOut,
    ChallengeOut,
    ErrorOut,
    GrantIn,
    ModelInfo,
    ModelKeyIn,
    ModelKeyReceipt,
    PrincipalIn,
    PrincipalOut,
    ReleaseIn,
    ReleaseOut,
    ReplicaIn,
    ReplicaOut,
    RequestKeyIn,
    RequestKeyReceipt,
    RevocationPollIn,
    RevocationPollOut,
)


def _content(model: type[Message]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"content": {"application/json": {"schema": ref}}}


def _answer(model: type[Message], description: str = "Successful Response") -> dict[str, Any]:
    return {"description": description, **_content(model)}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _answer(ErrorOut, "Malformed request (after authentication)."),
    403: _answer(ErrorOut, "The fixed denial: nothing says why."),
    404: _answer(ErrorOut, "Not found (told only to its owner)."),
    409: _answer(ErrorOut, "Conflicting version or registration."),
    500: _answer(ErrorOut, "The audit log does not verify: the database was tampered with."),
    413: _answer(ErrorOut, "Body larger than the limit."),
    429: _answer(ErrorOut, "Rate limited; see Retry-After."),
    503: _answer(ErrorOut, "The database is unavailable."),
}
_SIGNED = (
    "Signed request: the headers of sealserve.crypto.sign_request over method, path and body. "
    f"The response carries {RESPONSE_SIGNATURE_HEADER}."
)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    content = _encode(body)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _encode(body: Any) -> bytes:
    """An answer's bytes: a typed body's canonical JSON (or a plain JSON value's)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, Message):
        return body.to_json()
    return wire.canonical_json(body)


def _body_schema(model: type[Message]) -> dict[str, Any]:
    return {"requestBody": {"required": True, **_content(model)}}


class _BodyLimit:
    """Refuse bodies over ``limit`` bytes: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
        if declared is not None and declared > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> AsgiMessage:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: AsgiMessage) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        fixed = scope.get("path", "") in _UNSIGNED_FIXED_PATHS
        status, body = (403, _DENIAL) if fixed else (413, b'{"error":"request body too large"}')
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(service: KeyService, *, hot_path: bool = True) -> ASGIApp:
    """The ASGI application serving ``service``.

    With ``hot_path`` (the default) the runtime's round trip and ``/healthz`` are answered
    before FastAPI (:class:`~._hot.HotPath`); without it FastAPI serves them too, the same way.
    """
    app = FastAPI(
        title="sealserve KeyService",
        version=__version__,
        description=(
            "Attested key release: owners put model keys and grant users access under a runtime "
            "policy, users put request keys, and runtimes whose evidence satisfies the policies "
            "get the keys HPKE-wrapped to their fresh public key. See docs/keyservice.md."
        ),
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(_BodyLimit, limit=service.settings.max_body_bytes)
    metrics = service.metrics
    hot = HotEndpoints(service)

    def observe(route: str, status: int, started: float) -> None:
        metrics.observe(route, status, time.perf_counter() - started)

    def answer(hot_response: HotResponse) -> Response:
        status, content, extra = hot_response
        return _json(status, content, extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        return _json(400, {"error": first_error(exc.errors())})

    # -- plumbing for signed requests ---------------------------------------------------------

    async def signed(
        request: Request,
        route: str,
        handler: Callable[[PrincipalRow, bytes], Awaitable[Message]],
        *,
        budget: Budget = Budget.SIGNED,
    ) -> Response:
        started = time.perf_counter()
        body = await request.body()
        path = _signed_path(request)
        headers = request.headers
        try:
            signer = await service.authenticate(
                method=request.method, path=path, body=body, headers=headers, budget=budget
            )
            extra: dict[str, str] = {}
            status, out = 200, await handler(signer, body)
        except Exception as exc:  # mapped to a status, or re-raised
            status, out, extra = error_response(service, exc, route)
        content = _encode(out)
        payload = wire.response_signing_payload(
            method=request.method,
            path=path,
            request_tag=wire.request_tag(dict(headers)),
            status=status,
            body=content,
        )
        extra[RESPONSE_SIGNATURE_HEADER] = wire.b64encode(service.sign(payload))
        observe(route, status, started)
        return _json(status, content, extra)

    # -- unsigned: health, metrics, attestation, challenges, releases ------------------------

    @app.get(HEALTHZ_PATH, tags=["ops"], responses={200: {"description": "The service is up."}})
    async def healthz() -> Response:
        return answer(hot.healthz())

    @app.get(
        LIVE_PATH,
        tags=["ops"],
        responses={200: {"description": '{"live": true}'}, 503: {"description": "Not live."}},
    )
    async def live() -> Response:
        probe = hot.probe(LIVE_PATH)
        assert probe is not None
        return answer(probe)

    @app.get(
        READY_PATH,
        tags=["ops"],
        responses={200: {"description": '{"ready": true}'}, 503: {"description": "Not ready."}},
    )
    async def ready() -> Response:
        probe = hot.probe(READY_PATH)
        assert probe is not None
        return answer(probe)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get(
        wire.API_PREFIX + "/attestation",
        tags=["attestation"],
        responses={200: _answer(AttestationOut), **_ERRORS},
    )
    async def attestation(
        request: Request,
        nonce: str = Query(
            pattern=r"^[A-Za-z0-9_-]{22,86}$",
            description="16 to 64 random bytes, base64url: makes the evidence fresh.",
        ),
    ) -> Response:
        started = time.perf_counter()
        try:
            service.limit(Budget.ATTESTATION, _address(request))
            out = await service.attestation(wire.b64decode(nonce, name="nonce"))
            status = 200
        except Exception as exc:
            status, out, extra = error_response(service, exc, "attestation")
            observe("attestation", status, started)
            return _json(status, out, extra)
        observe("attestation", status, started)
        return _json(status, out)

    @app.post(
        wire.API_PREFIX + "/challenges",
        tags=["release"],
        status_code=201,
        description="A single-use nonce, valid for ttl_s; it binds the next release's evidence.",
        responses={201: _answer(ChallengeOut), 403: _ERRORS[403]},
    )
    async def challenge() -> Response:
        return answer(hot.challenge())

    @app.post(
        wire.API_PREFIX + "/releases",
        tags=["release"],
        responses={200: _answer(ReleaseOut), 403: _ERRORS[403], 429: _ERRORS[429]},
        openapi_extra=_body_schema(ReleaseIn),
    )
    async def release(request: Request) -> Response:
        return answer(await hot.release(await request.body()))

    @app.post(
        wire.API_PREFIX + "/revocations",
        tags=["release"],
        description="A runtime's revocation poll: what access changed since an epoch, sealed "
        "under its session key (from its releases).",
        responses={200: _answer(RevocationPollOut), 403: _ERRORS[403], 429: _ERRORS[429]},
        openapi_extra=_body_schema(RevocationPollIn),
    )
    async def revocations(request: Request) -> Response:
        return answer(await hot.revocations(await request.body()))

    @app.post(
        REPLICAS_PATH,
        tags=["release"],
        description="A KeyService of this one's own measurement, on another node, attests "
        "over a challenge and gets the master key HPKE-wrapped to its fresh key "
        "(docs/keyservice.md, replicas).",
        responses={200: _answer(ReplicaOut), 403: _ERRORS[403], 429: _ERRORS[429]},
        openapi_extra=_body_schema(ReplicaIn),
    )
    async def replicas(request: Request) -> Response:
        started = time.perf_counter()
        extra: dict[str, str] = {}
        out: Any
        try:
            out = await service.replicate(await request.body())
            status = 200
        except Exception as exc:
            status, out, extra = error_response(service, exc, "replicas")
        observe("replicas", status, started)
        return _json(status, _encode(out), extra)

    # -- principals ---------------------------------------------------------------------------

    @app.post(
        wire.API_PREFIX + "/principals",
        tags=["principals"],
        description="Register the key that signs this request. " + _SIGNED,
        responses={200: _answer(PrincipalOut), **_ERRORS},
        openapi_extra=_body_schema(PrincipalIn),
    )
    async def register(request: Request) -> Response:
        started = time.perf_counter()
        body = await request.body()
        path = _signed_path(request)
        extra: dict[str, str] = {}
        out: Any
        try:
            service.limit(Budget.REGISTRATION, _address(request))
            doc = PrincipalIn.from_json(body)
            out = await service.register(
                public_key=wire.b64decode(doc.public_key, name="public_key"),
                role=doc.role,
                method=request.method,
                path=path,
                body=body,
                headers=request.headers,
            )
            status = 200
        except Exception as exc:
            status, out, extra = error_response(service, exc, "register")
            if status == 400:  # unauthenticated: say nothing more than the denial
                status, out = 403, wire.DENIAL_BODY
        content = _encode(out)
        payload = wire.response_signing_payload(
            method=request.method,
            path=path,
            request_tag=wire.request_tag(dict(request.headers)),
            status=status,
            body=content,
        )
        extra[RESPONSE_SIGNATURE_HEADER] = wire.b64encode(service.sign(payload))
        observe("register", status, started)
        return _json(status, content, extra)

    # -- owner --------------------------------------------------------------------------------

    model_path = wire.API_PREFIX + "/models/{owner_id}/{name}"

    @app.put(
        model_path + "/key",
        tags=["owner"],
        description="Put version 1 of a model key, or rotate it to the next version. " + _SIGNED,
        responses={200: _answer(ModelKeyReceipt), **_ERRORS},
        openapi_extra=_body_schema(ModelKeyIn),
    )
    async def put_model_key(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME
    ) -> Response:
        async def handle(signer: PrincipalRow, body: bytes) -> Message:
            doc = ModelKeyIn.from_json(body)
            return await service.put_model_key(
                signer,
                owner_id=owner_id,
                name=name,
                version=doc.version,
                wrapped=wire.b64decode(doc.wrapped_key, name="wrapped_key"),
            )

        return await signed(request, "put_model_key", handle)

    @app.get(
        model_path,
        tags=["owner"],
        description="The model's key version and the users granted access. " + _SIGNED,
        responses={200: _answer(ModelInfo), **_ERRORS},
    )
    async def get_model(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME
    ) -> Response:
        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await service.model_info(signer, owner_id=owner_id, name=name)

        return await signed(request, "get_model", handle)

    @app.put(
        model_path + "/grants/{user_id}",
        tags=["owner"],
        description="Grant a user access under a runtime policy (or replace it). " + _SIGNED,
        responses={200: _answer(AccessChange), **_ERRORS},
        openapi_extra=_body_schema(GrantIn),
    )
    async def put_grant(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME, user_id: str = _P_USER
    ) -> Response:
        async def handle(signer: PrincipalRow, body: bytes) -> Message:
            doc = GrantIn.from_json(body)
            return await service.grant(
                signer, owner_id=owner_id, name=name, user_id=user_id, policy=doc.policy
            )

        return await signed(request, "grant", handle)

    @app.delete(
        model_path + "/grants/{user_id}",
        tags=["owner"],
        description="Revoke a grant: effective for the next release. " + _SIGNED,
        responses={200: _answer(AccessChange), **_ERRORS},
    )
    async def delete_grant(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME, user_id: str = _P_USER
    ) -> Response:
        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await service.revoke(signer, owner_id=owner_id, name=name, user_id=user_id)

        return await signed(request, "revoke", handle, budget=Budget.REVOCATION)

    @app.get(
        wire.API_PREFIX + "/audit",
        tags=["audit"],
        description="The audit log after an entry, hash-chained, with a checkpoint of its head "
        "signed by the attested KeyService: the caller's entries whole, the others as "
        "digests (sealserve.protocol.verify_audit checks a page). " + _SIGNED,
        responses={200: _answer(AuditPage), **_ERRORS},
    )
    async def audit(
        request: Request,
        after: int = Query(0, ge=0, description="Entries after this one (0: from the start)."),
        limit: int = Query(1000, ge=1, le=1000, description="At most this many entries."),
    ) -> Response:
        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await service.audit(signer, after=after, limit=limit)

        return await signed(request, "audit", handle)

    # -- user ---------------------------------------------------------------------------------

    @app.put(
        model_path + "/request-keys/{user_id}",
        tags=["user"],
        description="Put (or replace) the user's request key and runtime policy. " + _SIGNED,
        responses={200: _answer(RequestKeyReceipt), **_ERRORS},
        openapi_extra=_body_schema(RequestKeyIn),
    )
    async def put_request_key(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME, user_id: str = _P_USER
    ) -> Response:
        async def handle(signer: PrincipalRow, body: bytes) -> Message:
            doc = RequestKeyIn.from_json(body)
            return await service.put_request_key(
                signer,
                owner_id=owner_id,
                name=name,
                user_id=user_id,
                wrapped=wire.b64decode(doc.wrapped_key, name="wrapped_key"),
                policy=doc.policy,
            )

        return await signed(request, "put_request_key", handle)

    @app.delete(
        model_path + "/request-keys/{user_id}",
        tags=["user"],
        description="Withdraw the user's request key: effective for the next release. " + _SIGNED,
        responses={200: _answer(AccessChange), **_ERRORS},
    )
    async def delete_request_key(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME, user_id: str = _P_USER
    ) -> Response:
        async def handle(signer: PrincipalRow, _body: bytes) -> Message:
            return await service.delete_request_key(
                signer, owner_id=owner_id, name=name, user_id=user_id
            )

        return await signed(request, "delete_request_key", handle, budget=Budget.REVOCATION)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODIES:
                generated, nested = model.json_schema()
                components.update(nested)
                components[model.__name__] = generated
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    if not hot_path:
        return app
    return HotPath(hot, app, max_body_bytes=service.settings.max_body_bytes)


def _signed_path(request: Request) -> str:
    path: str = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    query = request.scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"
