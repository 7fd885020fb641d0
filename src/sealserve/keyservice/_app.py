"""The KeyService's HTTP API (FastAPI/Starlette): the router and the OpenAPI document.

Each route hands the raw request (signatures cover the exact bytes) to its operation in
:class:`~._endpoints.Endpoints`, the one request path, which parses the typed bodies of
:mod:`sealserve.protocol`; the document's schemas come from the same bodies.  Every response
to a signed request carries ``Sealserve-Response-Signature``: the KeyService's attested
Ed25519 key signs the request it answers, the status and the body, so a proxy cannot fake an
acknowledgement (say, of a revoke).

The runtime's round trip (``POST /v1/challenges``, ``POST /v1/releases``) and ``/healthz``
are routed in front of FastAPI by :class:`~._hot.HotPath`, to the same operations.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from sealserve import __version__
from sealserve._health import LIVE_PATH, READY_PATH
from sealserve.keyservice._endpoints import (
    DENIAL,
    Answer,
    Endpoints,
    SignedRequest,
    first_error,
)
from sealserve.keyservice._hot import HEALTHZ_PATH, HotPath
from sealserve.keyservice._replicas import REPLICAS_PATH
from sealserve.keyservice._service import KeyService
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
    f"The response carries {wire.RESPONSE_SIGNATURE_HEADER}."
)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    content = body if isinstance(body, bytes) else wire.canonical_json(body)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


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
        status, body = (403, DENIAL) if fixed else (413, b'{"error":"request body too large"}')
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
    endpoints = Endpoints(service)

    def respond(answer: Answer) -> Response:
        status, content, extra = answer
        return _json(status, content, extra)

    async def signed_request(request: Request) -> SignedRequest:
        return SignedRequest(
            method=request.method,
            path=_signed_path(request),
            body=await request.body(),
            headers=request.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        return _json(400, {"error": first_error(exc.errors())})

    # -- unsigned: health, metrics, attestation, challenges, releases ------------------------

    @app.get(HEALTHZ_PATH, tags=["ops"], responses={200: {"description": "The service is up."}})
    async def healthz() -> Response:
        return respond(endpoints.healthz())

    @app.get(
        LIVE_PATH,
        tags=["ops"],
        responses={200: {"description": '{"live": true}'}, 503: {"description": "Not live."}},
    )
    async def live() -> Response:
        probe = endpoints.probe(LIVE_PATH)
        assert probe is not None
        return respond(probe)

    @app.get(
        READY_PATH,
        tags=["ops"],
        responses={200: {"description": '{"ready": true}'}, 503: {"description": "Not ready."}},
    )
    async def ready() -> Response:
        probe = endpoints.probe(READY_PATH)
        assert probe is not None
        return respond(probe)

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
        return respond(await endpoints.attestation(nonce, _address(request)))

    @app.post(
        wire.API_PREFIX + "/challenges",
        tags=["release"],
        status_code=201,
        description="A single-use nonce, valid for ttl_s; it binds the next release's evidence.",
        responses={201: _answer(ChallengeOut), 403: _ERRORS[403]},
    )
    async def challenge() -> Response:
        return respond(endpoints.challenge())

    @app.post(
        wire.API_PREFIX + "/releases",
        tags=["release"],
        responses={200: _answer(ReleaseOut), 403: _ERRORS[403], 429: _ERRORS[429]},
        openapi_extra=_body_schema(ReleaseIn),
    )
    async def release(request: Request) -> Response:
        return respond(await endpoints.release(await request.body()))

    @app.post(
        wire.API_PREFIX + "/revocations",
        tags=["release"],
        description="A runtime's revocation poll: what access changed since an epoch, sealed "
        "under its session key (from its releases).",
        responses={200: _answer(RevocationPollOut), 403: _ERRORS[403], 429: _ERRORS[429]},
        openapi_extra=_body_schema(RevocationPollIn),
    )
    async def revocations(request: Request) -> Response:
        return respond(await endpoints.revocations(await request.body()))

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
        return respond(await endpoints.replicas(await request.body()))

    # -- principals ---------------------------------------------------------------------------

    @app.post(
        wire.API_PREFIX + "/principals",
        tags=["principals"],
        description="Register the key that signs this request. " + _SIGNED,
        responses={200: _answer(PrincipalOut), **_ERRORS},
        openapi_extra=_body_schema(PrincipalIn),
    )
    async def register(request: Request) -> Response:
        return respond(await endpoints.register(await signed_request(request), _address(request)))

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
        signed = await signed_request(request)
        return respond(await endpoints.put_model_key(signed, owner_id=owner_id, name=name))

    @app.get(
        model_path,
        tags=["owner"],
        description="The model's key version and the users granted access. " + _SIGNED,
        responses={200: _answer(ModelInfo), **_ERRORS},
    )
    async def get_model(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME
    ) -> Response:
        signed = await signed_request(request)
        return respond(await endpoints.model_info(signed, owner_id=owner_id, name=name))

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
        signed = await signed_request(request)
        answer = await endpoints.grant(signed, owner_id=owner_id, name=name, user_id=user_id)
        return respond(answer)

    @app.delete(
        model_path + "/grants/{user_id}",
        tags=["owner"],
        description="Revoke a grant: effective for the next release. " + _SIGNED,
        responses={200: _answer(AccessChange), **_ERRORS},
    )
    async def delete_grant(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME, user_id: str = _P_USER
    ) -> Response:
        signed = await signed_request(request)
        answer = await endpoints.revoke(signed, owner_id=owner_id, name=name, user_id=user_id)
        return respond(answer)

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
        signed = await signed_request(request)
        return respond(await endpoints.audit(signed, after=after, limit=limit))

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
        signed = await signed_request(request)
        answer = await endpoints.put_request_key(
            signed, owner_id=owner_id, name=name, user_id=user_id
        )
        return respond(answer)

    @app.delete(
        model_path + "/request-keys/{user_id}",
        tags=["user"],
        description="Withdraw the user's request key: effective for the next release. " + _SIGNED,
        responses={200: _answer(AccessChange), **_ERRORS},
    )
    async def delete_request_key(
        request: Request, owner_id: str = _P_OWNER, name: str = _P_NAME, user_id: str = _P_USER
    ) -> Response:
        signed = await signed_request(request)
        answer = await endpoints.delete_request_key(
            signed, owner_id=owner_id, name=name, user_id=user_id
        )
        return respond(answer)

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
    return HotPath(endpoints, app, max_body_bytes=service.settings.max_body_bytes)


def _signed_path(request: Request) -> str:
    path: str = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    query = request.scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"
