"""Model upload over HTTP: an owner streams its sealed model to the store, in signed chunks.

The API and its signatures are :mod:`sealserve.protocol`'s (``_uploads``); this is the
server.  Every request is checked in this order, and a refusal changes nothing:

1. the head: the signer's public key hashes to the principal it claims, its timestamp is in
   the replay window (:meth:`~sealserve.protocol.OwnerRequests.precheck`); the upload exists
   and is that principal's; the body's length is within the limit and lands at the upload's
   offset.  Only then is the body read;
2. the signature over the whole request, once (a replay is refused);
3. the content: a first chunk must start a sealed model (a plaintext ONNX file is refused
   before anything else arrives), the commit's digest must be the declared one.

The gateway never reads a model: it holds sealed bytes, checks their digest, and hands the
staged file to the store (:meth:`~sealserve.instance.SealedModelStore.adopt`: a rename for
the directory store).  A chunk is written whole or not at all; an upload that fails its
digest is discarded (the stored model it would have replaced stays); an upload with no
activity for ``ttl_s`` expires.  Error answers are the gateway's
``{"error": {"code", "message", "retryable"}}`` (docs/http-api.md, "Model upload").
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, NoReturn

from prometheus_client import CollectorRegistry, Counter, Gauge

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.config import GatewaySettings
from sealserve.errors import AccessDenied, ModelNotStored, ReplayQuotaExceeded, StoreIntegrityError
from sealserve.gateway._http import BodyError
from sealserve.gateway._staging import StagedUpload, Staging
from sealserve.instance import SEALED_HEADER_BYTES, SealedModelStore, check_sealed_header
from sealserve.protocol import (
    HostError,
    ModelDeleted,
    OwnerRequests,
    StoredModel,
    UploadIn,
    UploadOut,
    error_body,
    error_for_exception,
    split_model_id,
)

__all__ = ["UploadOptions", "UploadRequest", "UploadService"]

_log = get_logger(__name__)
_JSON: Final = "application/json"
_MAX_JSON_BYTES: Final = 64 * 1024
_DIGEST: Final = re.compile(r"sha256:([0-9a-f]{64})")
_UPLOAD_ID: Final = r"[A-Za-z0-9_-]{22,64}"

#: The routes, as the gateway's servers match them (method, pattern, handler name).
ROUTES: Final = (
    ("POST", re.compile(r"/v1/uploads"), "create"),
    ("GET", re.compile(rf"/v1/uploads/(?P<upload_id>{_UPLOAD_ID})"), "status"),
    ("PUT", re.compile(rf"/v1/uploads/(?P<upload_id>{_UPLOAD_ID})"), "chunk"),
    ("DELETE", re.compile(rf"/v1/uploads/(?P<upload_id>{_UPLOAD_ID})"), "abort"),
    ("POST", re.compile(rf"/v1/uploads/(?P<upload_id>{_UPLOAD_ID}):commit"), "commit"),
    ("DELETE", re.compile(r"/v1/models/(?P<owner_id>[^/]+)/(?P<name>[^/:]+)"), "delete_model"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UploadOptions:
    """Limits of the upload API (the ``[gateway]`` ``upload_*`` settings)."""

    #: Largest sealed model accepted.
    max_model_bytes: int = 4 << 30
    #: Largest chunk accepted (the client sends at most this much per request).
    chunk_bytes: int = 8 << 20
    #: Uploads in progress at once, in all, and per owner.
    max_uploads: int = 16
    max_uploads_per_owner: int = 4
    #: An upload with no activity for this long is discarded.
    ttl_s: float = 3600.0
    #: Accepted clock skew of signed requests, and how long their nonces are remembered.
    replay_window_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_model_bytes", "chunk_bytes", "max_uploads", "max_uploads_per_owner"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.chunk_bytes < SEALED_HEADER_BYTES:
            raise ValueError(f"chunk_bytes must be >= {SEALED_HEADER_BYTES}")
        for name in ("ttl_s", "replay_window_s"):
            value = getattr(self, name)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> UploadOptions:
        return cls(
            max_model_bytes=settings.max_model_bytes,
            chunk_bytes=settings.upload_chunk_bytes,
            max_uploads=settings.max_uploads,
            max_uploads_per_owner=settings.max_uploads_per_owner,
            ttl_s=settings.upload_ttl_s,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UploadRequest:
    """One request of the upload API, whichever server parsed it: ``target`` is the path
    with its query, as signed; ``read_body(limit=n)`` reads exactly the Content-Length."""

    method: str
    target: str
    query: str
    headers: Mapping[str, str]
    params: Mapping[str, str]
    read_body: Callable[..., Awaitable[bytes | bytearray]]


@dataclasses.dataclass(frozen=True, slots=True)
class UploadAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _UploadMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.uploads = Counter(
            "sealserve_gateway_uploads",
            "Model uploads by outcome: created, resumed, committed, aborted, expired, "
            "discarded (digest or format refused).",
            ["outcome"],
            registry=registry,
        )
        self.refused = Counter(
            "sealserve_gateway_upload_refusals",
            "Requests of the upload API refused, by error code.",
            ["code"],
            registry=registry,
        )
        self.bytes = Counter(
            "sealserve_gateway_upload_bytes",
            "Sealed bytes received in upload chunks that were accepted.",
            registry=registry,
        )
        self.open = Gauge(
            "sealserve_gateway_uploads_open",
            "Uploads in progress (staged, not committed).",
            registry=registry,
        )
        self.deletes = Counter(
            "sealserve_gateway_model_deletes",
            "Models deleted by their owners.",
            registry=registry,
        )
        for outcome in ("created", "resumed", "committed", "aborted", "expired", "discarded"):
            self.uploads.labels(outcome=outcome)


class UploadService:
    """The upload API over ``store``, staging in ``staging_dir`` (see the module docstring).

    For the directory store, stage inside it (``store.staging_dir()``): a commit is then a
    rename.
    """

    def __init__(
        self,
        store: SealedModelStore,
        *,
        staging_dir: Path,
        options: UploadOptions | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.options = options or UploadOptions()
        self._clock = clock
        self._staging = Staging(staging_dir)
        self._owners = OwnerRequests(replay_window_s=self.options.replay_window_s, clock=clock)
        self.metrics = _UploadMetrics(registry if registry is not None else CollectorRegistry())
        self._uploads: dict[str, StagedUpload] = {}
        for upload in self._staging.load():
            upload.last_active = clock.time()  # a restart gives each a full TTL again
            self._uploads[upload.upload_id] = upload
        self.metrics.open.set(len(self._uploads))
        if self._uploads:
            _log.event("upload.resumable", count=len(self._uploads))

    # -- dispatch ------------------------------------------------------------------------------

    async def handle(self, name: str, request: UploadRequest) -> UploadAnswer:
        """Serve ``request`` with handler ``name`` (of :data:`ROUTES`); errors are answers."""
        handler = getattr(self, f"_{name}")
        try:
            self._expire()
            status, doc = await handler(request)
        except Exception as exc:
            error = _error_for(exc)
            self.metrics.refused.labels(code=error.code).inc()
            level = logging.ERROR if error.status == 500 else logging.INFO
            _log.event("upload.refused", level=level, route=name, code=error.code,
                       error=type(exc).__name__)  # fmt: skip
            headers = {"content-type": _JSON, **error.headers()}
            return UploadAnswer(error.status, headers, error_body(error))
        return UploadAnswer(status, {"content-type": _JSON}, doc)

    # -- the handlers --------------------------------------------------------------------------

    async def _create(self, request: UploadRequest) -> tuple[int, bytes]:
        principal = self._owners.precheck(request.headers)
        body = await self._small_body(request)
        self._verify(request, body)
        try:
            doc = UploadIn.from_json(bytes(body))
        except ValueError as exc:
            raise HostError(400, "bad_request", str(exc)) from None
        owner_id, _ = split_model_id(doc.model_id)
        if owner_id != principal:
            _deny("not_the_owner", principal)
        digest = doc.digest.removeprefix("sha256:")
        if doc.size > self.options.max_model_bytes:
            raise HostError(
                413,
                "payload_too_large",
                f"the sealed model is {doc.size} bytes; the limit is "
                f"{self.options.max_model_bytes}",
            )
        wanted = {
            "model_id": doc.model_id,
            "size": doc.size,
            "digest": digest,
            "key_version": doc.key_version,
        }
        if doc.upload_id:
            upload = self._owned(doc.upload_id, principal)
            if not upload.same_as(**wanted):  # type: ignore[arg-type]
                raise HostError(
                    409,
                    "upload_mismatch",
                    f"upload {upload.upload_id} is of model {upload.model_id}, "
                    f"sha256:{upload.digest}, {upload.size} bytes, key version "
                    f"{upload.key_version}; this resumes it with other values: abort it "
                    "(DELETE) or begin a new upload",
                )
            self.metrics.uploads.labels(outcome="resumed").inc()
            return 200, self._out(upload)
        for upload in self._uploads.values():
            if upload.owner_id == principal and upload.same_as(**wanted):  # type: ignore[arg-type]
                self.metrics.uploads.labels(outcome="resumed").inc()
                return 200, self._out(upload)
        await self._check_version(doc.model_id, doc.key_version)
        mine = sum(1 for u in self._uploads.values() if u.owner_id == principal)
        if len(self._uploads) >= self.options.max_uploads or (
            mine >= self.options.max_uploads_per_owner
        ):
            raise HostError(
                429,
                "too_many_uploads",
                f"{len(self._uploads)} uploads are in progress ({mine} of this owner; limits "
                f"{self.options.max_uploads} and {self.options.max_uploads_per_owner}): "
                "finish or abort one, or retry later",
                retryable=True,
            )
        upload = await asyncio.to_thread(
            self._staging.begin,
            owner_id=principal,
            now=self._clock.time(),
            **wanted,  # type: ignore[arg-type]
        )
        self._uploads[upload.upload_id] = upload
        self.metrics.open.set(len(self._uploads))
        self.metrics.uploads.labels(outcome="created").inc()
        _log.event("upload.created", upload_id=upload.upload_id, model_id=upload.model_id,
                   size=upload.size, key_version=upload.key_version)  # fmt: skip
        return 201, self._out(upload)

    async def _status(self, request: UploadRequest) -> tuple[int, bytes]:
        principal = self._owners.precheck(request.headers)
        upload = self._owned(request.params["upload_id"], principal)
        self._verify(request, await self._small_body(request))
        return 200, self._out(upload)

    async def _chunk(self, request: UploadRequest) -> tuple[int, bytes]:
        principal = self._owners.precheck(request.headers)
        upload = self._owned(request.params["upload_id"], principal)
        offset = _offset(request.query)
        length = _content_length(request.headers, limit=self.options.chunk_bytes)
        if offset != upload.offset:
            raise HostError(
                409,
                "upload_offset_mismatch",
                f"upload {upload.upload_id} has {upload.offset} bytes; send the chunk that "
                f"starts there, not at {offset}",
            )
        if offset + length > upload.size:
            raise HostError(
                413,
                "payload_too_large",
                f"the chunk ends at byte {offset + length}, past the declared size {upload.size}",
            )
        if upload.busy:
            raise HostError(
                409, "upload_busy", f"a chunk of upload {upload.upload_id} is being written"
            )
        upload.busy = True
        try:
            body = await request.read_body(limit=length)
            if len(body) != length:
                raise HostError(400, "bad_request", "the body is shorter than its Content-Length")
            # The signature check and the running digest each hash the chunk: on two threads
            # at once (hashlib lets go of the GIL); the digest is kept only if the check passes.
            results: tuple[Any, Any] = await asyncio.gather(
                asyncio.to_thread(self._verify, request, body),
                asyncio.to_thread(self._staging.hashed_with, upload, memoryview(body)),
                return_exceptions=True,
            )
            checked, hashed = results
            if isinstance(checked, BaseException):
                raise checked
            if isinstance(hashed, OSError):
                raise _storage_error(hashed) from None
            if isinstance(hashed, BaseException):
                raise hashed
            if upload.offset != offset or upload.upload_id not in self._uploads:
                raise HostError(409, "upload_offset_mismatch", "the upload moved meanwhile")
            if offset < SEALED_HEADER_BYTES <= offset + length or (
                offset == 0 and length == upload.size
            ):
                await self._check_sealed(upload, offset, body)
            try:
                await asyncio.to_thread(
                    self._staging.write, upload, offset, memoryview(body), hashed
                )
            except OSError as exc:
                raise _storage_error(exc) from None
            upload.last_active = self._clock.time()
        finally:
            upload.busy = False
        self.metrics.bytes.inc(length)
        return 200, self._out(upload)

    async def _commit(self, request: UploadRequest) -> tuple[int, bytes]:
        principal = self._owners.precheck(request.headers)
        upload = self._owned(request.params["upload_id"], principal)
        self._verify(request, await self._small_body(request))
        if upload.busy:
            raise HostError(
                409, "upload_busy", f"a chunk of upload {upload.upload_id} is being written"
            )
        if upload.offset != upload.size:
            raise HostError(
                409,
                "upload_incomplete",
                f"upload {upload.upload_id} has {upload.offset} of {upload.size} bytes; send "
                f"the rest from offset {upload.offset}",
            )
        upload.busy = True
        try:
            digest = await asyncio.to_thread(self._staging.digest, upload)
            if digest != upload.digest:
                self._drop(upload, "discarded")
                raise HostError(
                    422,
                    "digest_mismatch",
                    f"the {upload.size} bytes received hash to sha256:{digest}, not the "
                    f"declared sha256:{upload.digest}; the upload is discarded (the stored "
                    "model, if any, is unchanged): upload again",
                )
            await self._check_version(upload.model_id, upload.key_version)
            try:
                manifest = await asyncio.to_thread(
                    self.store.adopt,
                    upload.model_id,
                    self._staging.part(upload.upload_id),
                    digest=digest,
                    size=upload.size,
                    key_version=upload.key_version,
                )
            except ValueError as exc:
                self._drop(upload, "discarded")
                raise HostError(
                    422, "not_a_sealed_model", f"{exc}; the upload is discarded"
                ) from None
            except OSError as exc:
                raise _storage_error(exc) from None
        finally:
            upload.busy = False
        self._uploads.pop(upload.upload_id, None)
        await asyncio.to_thread(self._staging.discard, upload.upload_id)
        self.metrics.open.set(len(self._uploads))
        self.metrics.uploads.labels(outcome="committed").inc()
        _log.event("upload.committed", upload_id=upload.upload_id, model_id=upload.model_id,
                   digest=digest, size=upload.size, key_version=upload.key_version)  # fmt: skip
        return 200, _stored(manifest.model_id, manifest.size, manifest.key_version,
                            manifest.digest, manifest.stored_at)  # fmt: skip

    async def _abort(self, request: UploadRequest) -> tuple[int, bytes]:
        principal = self._owners.precheck(request.headers)
        upload = self._owned(request.params["upload_id"], principal)
        self._verify(request, await self._small_body(request))
        if upload.busy:
            raise HostError(
                409, "upload_busy", f"a chunk of upload {upload.upload_id} is being written"
            )
        out = self._out(upload)
        self._drop(upload, "aborted")
        return 200, out

    async def _delete_model(self, request: UploadRequest) -> tuple[int, bytes]:
        principal = self._owners.precheck(request.headers)
        model_id = f"{request.params['owner_id']}/{request.params['name']}"
        try:
            owner_id, _ = split_model_id(model_id)
        except ValueError as exc:
            raise HostError(400, "bad_request", str(exc)) from None
        if owner_id != principal:
            _deny("not_the_owner", principal)
        self._verify(request, await self._small_body(request))
        wanted = _query_value(request.query, "digest")
        match = _DIGEST.fullmatch(wanted or "")
        if match is None:
            raise HostError(
                400,
                "bad_request",
                "name the digest of the model to delete: ?digest=sha256:<hex> (GET the model "
                "for it)",
            )
        try:
            manifest = await asyncio.to_thread(self.store.get, model_id)
        except ModelNotStored:
            raise HostError(404, "unknown_model", f"no model {model_id} is stored") from None
        if manifest.digest != match.group(1):
            raise HostError(
                412,
                "digest_precondition_failed",
                f"model {model_id} is now sha256:{manifest.digest}, not {wanted}: it changed "
                "since you looked; nothing was deleted",
            )
        await asyncio.to_thread(self.store.remove, model_id)
        self.metrics.deletes.inc()
        _log.event("upload.model_deleted", model_id=model_id, digest=manifest.digest)
        doc = ModelDeleted(model_id=model_id, digest=f"sha256:{manifest.digest}", deleted=True)
        return 200, doc.to_json()

    # -- helpers -------------------------------------------------------------------------------

    def _verify(self, request: UploadRequest, body: bytes | bytearray) -> str:
        return self._owners.verify(
            method=request.method, path=request.target, body=body, headers=request.headers
        )

    async def _small_body(self, request: UploadRequest) -> bytes | bytearray:
        raw = request.headers.get("content-length", "0")
        if not raw.isdigit():
            raise HostError(400, "bad_request", f"Content-Length has value {raw!r}")
        length = int(raw)
        if length > _MAX_JSON_BYTES:
            raise HostError(
                413, "payload_too_large", f"the body is {length} bytes; the limit is 65536"
            )
        if not length:
            return b""
        body = await request.read_body(limit=length)
        if len(body) != length:
            raise HostError(400, "bad_request", "the body is shorter than its Content-Length")
        return body

    def _owned(self, upload_id: str, principal: str) -> StagedUpload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise HostError(
                404,
                "unknown_upload",
                f"no upload {upload_id} is in progress (finished, aborted or expired); begin "
                "a new one",
            )
        if upload.owner_id != principal:
            _deny("not_the_owner", principal)
        return upload

    async def _check_version(self, model_id: str, key_version: int) -> None:
        try:
            current = await asyncio.to_thread(self.store.get, model_id)
        except ModelNotStored:
            return
        except StoreIntegrityError:
            return  # a damaged manifest is replaced by the new upload
        if current.key_version > key_version:
            raise HostError(
                409,
                "stale_key_version",
                f"model {model_id} is stored under key version {current.key_version}; an "
                f"upload sealed under version {key_version} would roll it back",
            )

    async def _check_sealed(
        self, upload: StagedUpload, offset: int, body: bytes | bytearray
    ) -> None:
        head = await asyncio.to_thread(self._staging.head, upload, offset) if offset else b""
        head += bytes(body[: SEALED_HEADER_BYTES - len(head)])
        try:
            check_sealed_header(head, upload.size)
        except ValueError:
            self._drop(upload, "discarded")
            raise HostError(
                422,
                "not_a_sealed_model",
                "the upload does not begin with a sealed model's header (seal the model with "
                "sealserve.crypto.seal_model; the gateway never stores a model in the clear); "
                "the upload is discarded",
            ) from None
        try:
            check_sealed_header(head, upload.size, upload.key_version)
        except ValueError as exc:
            self._drop(upload, "discarded")
            raise HostError(422, "not_a_sealed_model", f"{exc}; the upload is discarded") from None

    def _drop(self, upload: StagedUpload, outcome: str) -> None:
        self._uploads.pop(upload.upload_id, None)
        self._staging.discard(upload.upload_id)
        self.metrics.open.set(len(self._uploads))
        self.metrics.uploads.labels(outcome=outcome).inc()
        _log.event(f"upload.{outcome}", upload_id=upload.upload_id, model_id=upload.model_id)

    def _expire(self) -> None:
        limit = self._clock.time() - self.options.ttl_s
        for upload in list(self._uploads.values()):
            if not upload.busy and upload.last_active < limit:
                self._drop(upload, "expired")

    def _out(self, upload: StagedUpload) -> bytes:
        return UploadOut(
            upload_id=upload.upload_id,
            model_id=upload.model_id,
            size=upload.size,
            digest=f"sha256:{upload.digest}",
            key_version=upload.key_version,
            offset=upload.offset,
            chunk_bytes=self.options.chunk_bytes,
            expires_at=round(upload.last_active + self.options.ttl_s, 3),
        ).to_json()

    @property
    def in_progress(self) -> int:
        return len(self._uploads)


def _stored(model_id: str, size: int, key_version: int, digest: str, stored_at: float) -> bytes:
    owner_id, name = split_model_id(model_id)
    return StoredModel(
        model_id=model_id,
        owner_id=owner_id,
        name=name,
        size=size,
        key_version=key_version,
        digest=f"sha256:{digest}",
        stored_at=stored_at,
    ).to_json()


def _deny(reason: str, principal: str) -> NoReturn:
    _log.event("upload.denied", level=logging.DEBUG, reason=reason, principal=principal)
    raise AccessDenied()


def _error_for(exc: BaseException) -> HostError:
    if isinstance(exc, ReplayQuotaExceeded):
        return HostError(429, "too_many_requests", str(exc), retryable=True)
    if isinstance(exc, BodyError):  # the client left or was cut off mid-body
        return HostError(400, "bad_request", str(exc))
    return error_for_exception(exc)


def _storage_error(exc: OSError) -> HostError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HostError(507, "insufficient_storage", "the gateway's staging disk is full")
    return HostError(
        503, "store_unavailable", f"the model store failed: {type(exc).__name__}", retryable=True
    )


def _query_value(query: str, name: str) -> str | None:
    for part in query.split("&"):
        key, sep, value = part.partition("=")
        if key == name and sep:
            return value.replace("%3A", ":").replace("%3a", ":")
    return None


def _offset(query: str) -> int:
    raw = _query_value(query, "offset")
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        raise HostError(
            400, "bad_request", f"the chunk's ?offset=N is missing or malformed: {raw!r}"
        )
    return int(raw)


def _content_length(headers: Mapping[str, str], *, limit: int) -> int:
    raw = headers.get("content-length")
    if raw is None:
        raise HostError(411, "length_required", "send each chunk with a Content-Length")
    if not raw.isascii() or not raw.isdigit():
        raise HostError(400, "bad_request", f"Content-Length has value {raw!r}")
    length = int(raw)
    if length < 1:
        raise HostError(400, "bad_request", "the chunk is empty")
    if length > limit:
        raise HostError(
            413, "payload_too_large", f"the chunk is {length} bytes; the limit is {limit}"
        )
    return length
