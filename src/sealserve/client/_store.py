"""The owner's side of the gateway's model store: upload a sealed model, look it up, delete it.

::

    with StoreClient("https://gateway:8480", identity=owner_identity, ca_bundle="ca.pem") as s:
        stored = s.upload(model_id, sealed_file, size=n, digest=hexdigest, key_version=2,
                          progress=print)
        s.delete(model_id)                  # names the digest it saw, so it deletes only that

Every request is signed by the owner (:func:`sealserve.protocol.owner_headers`); the bytes are
already sealed, so the gateway learns the model's size and nothing of its content.  An upload
goes in chunks (at most what the gateway advertises); when the connection breaks, the client
asks where the upload stands and goes on from there, ``retries`` times in a row at most, with
a doubling pause (0.5 s up to 8 s).  :meth:`StoreClient.upload` takes an ``upload_id`` to
resume an upload that an earlier process began (with the same sealed bytes).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, BinaryIO, Final, TypeVar

import httpx

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._resource import Resource
from sealserve._tls import client_context
from sealserve.crypto import Identity
from sealserve.errors import AccessDenied, GatewayError, ModelNotAvailable, UploadRefused
from sealserve.protocol import (
    UPLOADS_PATH,
    Message,
    ModelDeleted,
    StoredModel,
    UploadIn,
    UploadOut,
    chunk_path,
    commit_path,
    model_path,
    owner_headers,
    split_model_id,
    upload_path,
)

__all__ = ["StoreClient"]

_M = TypeVar("_M", bound=Message)
_FIRST_PAUSE_S: Final = 0.5
_MAX_PAUSE_S: Final = 8.0


class StoreClient(Resource):
    """HTTP client of the gateway's upload API for one owner; use it inside ``with``.

    ``ca_bundle`` (a PEM file) is what an ``https://`` gateway's certificate must chain to
    (default: the system's roots); ``chunk_bytes`` caps the chunks sent (the gateway's
    limit, if lower, wins).
    """

    resource_name = "the store client"

    def __init__(
        self,
        url: str,
        *,
        identity: Identity,
        ca_bundle: str | os.PathLike[str] | None = None,
        timeout_s: float = 60.0,
        chunk_bytes: int = 8 << 20,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not isinstance(identity, Identity):
            raise TypeError(f"identity must be an Identity, got {type(identity).__name__}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 64:
            raise ValueError(f"chunk_bytes must be an int >= 64, got {chunk_bytes!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        super().__init__()
        self.url = url.rstrip("/")
        self.identity = identity
        self._verify: ssl.SSLContext | bool = (
            client_context(ca_bundle) if parsed.scheme == "https" else True
        )
        self._timeout_s = timeout_s
        self._chunk_bytes = chunk_bytes
        self._retries = retries
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._http: httpx.Client | None = None

    def _open(self) -> None:
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(self._timeout_s, connect=10.0),
            transport=self._transport,
            verify=self._verify,
        )

    def _close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- requests ------------------------------------------------------------------------------

    def _headers(
        self, method: str, path: str, body: bytes | bytearray | memoryview
    ) -> dict[str, str]:
        """The signed headers of a request (thread-safe: chunks are signed ahead)."""
        headers = owner_headers(
            self.identity, method=method, path=path, body=body, clock=self._clock
        )
        if len(body):
            headers["content-type"] = (
                "application/json" if path == UPLOADS_PATH else "application/octet-stream"
            )
        return headers

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | bytearray | memoryview = b"",
        signed: bool = True,
        answer: type[_M],
        headers: dict[str, str] | None = None,
    ) -> _M:
        """One request (signed unless ``signed`` is false; ``headers`` signed already); a
        transport failure is a retryable :class:`GatewayError`."""
        self._check_opened()
        assert self._http is not None
        if headers is None:
            headers = self._headers(method, path, body) if signed else {}
        try:
            response = self._http.request(method, path, content=bytes(body), headers=headers)
        except httpx.HTTPError as exc:
            error = GatewayError(f"the gateway at {self.url} is unreachable: {type(exc).__name__}")
            error.retryable = True
            raise error from exc
        if response.status_code >= 300:
            raise _refusal(response)
        try:
            return answer.from_json(response.content)
        except ValueError as exc:
            raise GatewayError(
                f"the gateway's answer to {method} {path} is not a {answer.__name__}: {exc}"
            ) from None

    def _again(self, what: Callable[[], _M]) -> _M:
        """``what()``, again after a retryable failure (``retries`` times at most)."""
        pause = _FIRST_PAUSE_S
        for attempt in range(self._retries + 1):  # bounded: retries + 1 tries
            try:
                return what()
            except GatewayError as exc:
                if not exc.retryable or attempt == self._retries:
                    raise
            self._sleep(pause)
            pause = min(_MAX_PAUSE_S, pause * 2)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the API -------------------------------------------------------------------------------

    def begin(
        self, model_id: str, *, size: int, digest: str, key_version: int, upload_id: str = ""
    ) -> UploadOut:
        """Begin an upload (or resume ``upload_id``, or the same upload in progress)."""
        split_model_id(model_id)
        body = UploadIn(
            model_id=model_id,
            size=size,
            digest=f"sha256:{digest.removeprefix('sha256:')}",
            key_version=key_version,
            upload_id=upload_id,
        ).to_json()
        return self._again(lambda: self._request("POST", UPLOADS_PATH, body=body, answer=UploadOut))

    def status(self, upload_id: str) -> UploadOut:
        """Where the upload stands (its ``offset``)."""
        return self._again(lambda: self._request("GET", upload_path(upload_id), answer=UploadOut))

    def abort(self, upload_id: str) -> UploadOut:
        """Abandon the upload (its staged bytes are removed)."""
        return self._again(
            lambda: self._request("DELETE", upload_path(upload_id), answer=UploadOut)
        )

    def upload(
        self,
        model_id: str,
        sealed: BinaryIO,
        *,
        size: int,
        digest: str,
        key_version: int,
        upload_id: str = "",
        progress: Callable[[int], None] | None = None,
        on_begin: Callable[[UploadOut], None] | None = None,
    ) -> StoredModel:
        """Upload the sealed model in ``sealed`` (a seekable binary file of ``size`` bytes
        whose SHA-256 is ``digest``) and commit it; what the store now holds.

        ``upload_id`` resumes an upload an earlier process began with the same bytes (one
        that expired meanwhile is begun anew); ``on_begin`` is told the upload (its id, to
        resume it later); ``progress`` is called with the bytes the gateway holds after each
        chunk.  A broken connection is survived (see the module docstring); a refusal raises
        :class:`~sealserve.errors.UploadRefused` (its ``code`` says why) or
        :class:`~sealserve.errors.AccessDenied`.
        """
        if not sealed.seekable():
            raise ValueError("sealed must be a seekable binary file")
        try:
            state = self.begin(
                model_id, size=size, digest=digest, key_version=key_version, upload_id=upload_id
            )
        except UploadRefused as exc:
            if not upload_id or exc.code != "unknown_upload":
                raise
            state = self.begin(model_id, size=size, digest=digest, key_version=key_version)
        if on_begin is not None:
            on_begin(state)
        if progress is not None:
            progress(state.offset)
        upload_id = state.upload_id
        step = min(state.chunk_bytes, self._chunk_bytes)

        def prepare(offset: int) -> tuple[int, bytes, dict[str, str]]:
            """Read and sign the chunk at ``offset`` (on a helper thread, while the previous
            chunk is on its way: the signature hashes the chunk)."""
            sealed.seek(offset)
            chunk = sealed.read(min(step, size - offset))
            if offset + len(chunk) != min(offset + step, size):
                raise ValueError(f"sealed ends at byte {offset + len(chunk)}, not {size}")
            path = chunk_path(upload_id, offset)
            return offset, chunk, self._headers("PUT", path, chunk)

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="upload") as ahead:
            state = self._send_chunks(state, size, ahead, prepare, progress)
        return self._again(
            lambda: self._request("POST", commit_path(upload_id), answer=StoredModel)
        )

    def _send_chunks(
        self,
        state: UploadOut,
        size: int,
        ahead: concurrent.futures.Executor,
        prepare: Callable[[int], tuple[int, bytes, dict[str, str]]],
        progress: Callable[[int], None] | None,
    ) -> UploadOut:
        """Send every chunk from ``state.offset`` on, each signed one step ahead."""
        failures = 0
        pause = _FIRST_PAUSE_S
        pending = ahead.submit(prepare, state.offset)
        while state.offset < size:  # bounded: each turn moves on or counts a failure
            offset, chunk, headers = pending.result()
            if offset != state.offset:  # the upload is elsewhere (after a failure)
                pending = ahead.submit(prepare, state.offset)
                continue
            following = offset + len(chunk)
            if following < size:
                pending = ahead.submit(prepare, following)
            try:
                state = self._request(
                    "PUT",
                    chunk_path(state.upload_id, offset),
                    body=chunk,
                    headers=headers,
                    answer=UploadOut,
                )
                failures, pause = 0, _FIRST_PAUSE_S
            except UploadRefused as exc:
                if exc.code not in ("upload_offset_mismatch", "upload_busy"):
                    raise
                failures += 1
                if failures > self._retries:
                    raise
                state = self.status(state.upload_id)
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                failures += 1
                if failures > self._retries:
                    raise
                self._sleep(pause)
                pause = min(_MAX_PAUSE_S, pause * 2)
                state = self.status(state.upload_id)
            if progress is not None:
                progress(state.offset)
            if state.offset < size and (following >= size or state.offset != following):
                pending = ahead.submit(prepare, state.offset)
        return state

    def model(self, model_id: str) -> StoredModel:
        """What the store holds for ``model_id``; :class:`ModelNotAvailable` if nothing."""
        return self._request("GET", model_path(model_id), signed=False, answer=StoredModel)

    def delete(self, model_id: str, *, digest: str | None = None) -> ModelDeleted:
        """Delete ``model_id`` from the store: the version of ``digest`` (default: the one
        stored now, looked up first); a model replaced meanwhile is not deleted
        (:class:`UploadRefused` ``digest_precondition_failed``)."""
        if digest is None:
            digest = self.model(model_id).digest
        wanted = f"sha256:{digest.removeprefix('sha256:')}"
        path = f"{model_path(model_id)}?digest={wanted}"
        return self._request("DELETE", path, answer=ModelDeleted)

    def __repr__(self) -> str:
        return f"StoreClient({self.url!r}, state={self.state.value})"


def _refusal(response: httpx.Response) -> Exception:
    try:
        error: Any = json.loads(response.content)["error"]
        code, message = str(error["code"]), str(error["message"])
        retryable = bool(error.get("retryable", False))
    except (ValueError, KeyError, TypeError):
        failure = GatewayError(f"the gateway answered HTTP {response.status_code}")
        failure.retryable = response.status_code >= 500
        return failure
    if code == "access_denied":
        return AccessDenied()
    if code == "unknown_model":
        return ModelNotAvailable(message)
    return UploadRefused(f"{code}: {message}", code=code, retryable=retryable)
