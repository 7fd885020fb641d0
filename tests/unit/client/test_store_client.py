"""The owner's store client against the gateway's upload API in memory: it survives broken
connections (the chunk that was lost, the answer that was lost), turns refusals into
exceptions with their code, and deletes only the version it saw."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sealserve.client import StoreClient
from sealserve.crypto import Identity
from sealserve.errors import AccessDenied, GatewayError, ModelNotAvailable, UploadRefused
from sealserve.gateway._http import HttpServer
from tests.unit.gateway import test_uploads
from tests.unit.gateway.lean import LeanClientTransport
from tests.unit.gateway.test_uploads import CHUNK, MODEL, OTHER, OWNER, gateway_at, sealed_model


class Flaky(httpx.BaseTransport):
    """A synchronous transport to the gateway's own server in memory; ``fail(n, request)``
    says whether the n-th request breaks (``"before"`` it reaches the server, ``"after"``
    its answer is lost, or ``None``)."""

    def __init__(self, root: Path, fail: Callable[[int, httpx.Request], str | None]) -> None:
        self.gateway = gateway_at(root)
        self.inner = LeanClientTransport(
            HttpServer(app=self.gateway.app, routes=self.gateway.lean_routes()), piece=2048
        )
        self.fail = fail
        self.count = 0
        self.methods: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        self.methods.append(request.method)
        when = self.fail(self.count, request)
        if when == "before":
            raise httpx.ConnectError("connection refused", request=request)

        async def go() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            return httpx.Response(
                response.status_code, headers=response.headers, content=await response.aread()
            )

        response = asyncio.run(go())
        if when == "after":
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def client(transport: httpx.BaseTransport, identity: Identity = OWNER) -> StoreClient:
    return StoreClient(
        "http://gw", identity=identity, transport=transport, chunk_bytes=CHUNK, retries=3,
        sleep=lambda _s: None, clock=test_uploads.CLOCK,  # the gateway's (manual) clock
    )  # fmt: skip


def upload(store: StoreClient, blob: bytes, **kwargs: object) -> object:
    return store.upload(
        MODEL, io.BytesIO(blob), size=len(blob), digest=hashlib.sha256(blob).hexdigest(),
        key_version=1, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_an_upload_survives_lost_chunks_and_lost_answers(tmp_path: Path) -> None:
    blob = sealed_model(30_000)

    def fail(n: int, request: httpx.Request) -> str | None:
        if request.method != "PUT":
            return None
        return {3: "before", 5: "after", 6: "before", 9: "after"}.get(n)

    transport = Flaky(tmp_path, fail)
    seen: list[int] = []
    with client(transport) as store:
        stored = upload(store, blob, progress=seen.append)
    assert stored.digest == "sha256:" + hashlib.sha256(blob).hexdigest()  # type: ignore[attr-defined]
    assert seen[0] == 0
    assert seen[-1] == len(blob)
    assert transport.methods.count("GET") == 3  # after each failure it asked where it stood
    uploads = transport.gateway.uploads
    assert uploads is not None
    assert uploads.store.read(MODEL)[1] == blob


def test_a_connection_that_stays_down_fails_after_the_retries(tmp_path: Path) -> None:
    blob = sealed_model(20_000)
    transport = Flaky(tmp_path, lambda n, r: "before" if r.method == "PUT" else None)
    with client(transport) as store, pytest.raises(GatewayError, match="unreachable") as info:
        upload(store, blob)
    assert info.value.retryable
    assert transport.methods.count("PUT") == 4  # one try and three retries


def test_refusals_keep_their_code_and_an_upload_resumes_in_a_new_client(tmp_path: Path) -> None:
    blob = sealed_model(20_000)
    transport = Flaky(tmp_path, lambda n, r: None)
    digest = hashlib.sha256(blob).hexdigest()
    with client(transport) as store:
        began = store.begin(MODEL, size=len(blob), digest=digest, key_version=1)
        with pytest.raises(UploadRefused) as info:
            store.upload(MODEL, io.BytesIO(b"x" * len(blob)), size=len(blob),
                         digest="0" * 64, key_version=1, upload_id=began.upload_id)  # fmt: skip
        assert info.value.code == "upload_mismatch"
    with client(transport, OTHER) as stranger, pytest.raises(AccessDenied):
        stranger.status(began.upload_id)
    with client(transport) as store:  # another process, the same sealed bytes
        stored = upload(store, blob, upload_id=began.upload_id)
        assert stored.size == len(blob)  # type: ignore[attr-defined]


def test_a_cut_upload_resumes_in_a_new_client_sending_only_the_missing_chunks(
    tmp_path: Path,
) -> None:
    blob = sealed_model(30_000)
    down = [False]
    cut = [True]
    got: list[tuple[int, int]] = []  # (offset, length) of each chunk that reached the gateway

    def fail(n: int, request: httpx.Request) -> str | None:
        if down[0]:
            return "before"
        if request.method != "PUT":
            return None
        got.append((int(request.url.params["offset"]), len(request.content)))
        if cut[0] and len(got) == 3:  # the third chunk arrives, its answer is lost, the
            down[0], cut[0] = True, False  # link stays down
            return "after"
        return None

    transport = Flaky(tmp_path, fail)
    began: list[str] = []
    with client(transport) as store, pytest.raises(GatewayError, match="unreachable"):
        upload(store, blob, on_begin=lambda state: began.append(state.upload_id))
    assert got == [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, CHUNK)]
    del got[:]
    down[0] = False
    seen: list[int] = []
    with client(transport) as store:  # another process, the same sealed bytes
        assert store.status(began[0]).offset == 3 * CHUNK
        stored = upload(store, blob, upload_id=began[0], progress=seen.append)
    assert seen[0] == 3 * CHUNK
    assert got[0][0] == 3 * CHUNK  # only what the gateway lacked was sent, once
    assert [offset for offset, _ in got] == list(range(3 * CHUNK, len(blob), CHUNK))
    assert sum(length for _, length in got) == len(blob) - 3 * CHUNK
    assert stored.digest == "sha256:" + hashlib.sha256(blob).hexdigest()  # type: ignore[attr-defined]
    uploads = transport.gateway.uploads
    assert uploads is not None
    assert uploads.store.read(MODEL)[1] == blob


def test_an_upload_id_the_gateway_no_longer_knows_begins_anew(tmp_path: Path) -> None:
    blob = sealed_model(10_000)
    transport = Flaky(tmp_path, lambda n, r: None)
    digest = hashlib.sha256(blob).hexdigest()
    with client(transport) as store:
        old = store.begin(MODEL, size=len(blob), digest=digest, key_version=1)
        store.abort(old.upload_id)
        began: list[str] = []
        stored = upload(
            store, blob, upload_id=old.upload_id, on_begin=lambda s: began.append(s.upload_id)
        )
        assert began
        assert began[0] != old.upload_id
        assert stored.size == len(blob)  # type: ignore[attr-defined]


def test_delete_removes_the_version_it_saw_only(tmp_path: Path) -> None:
    transport = Flaky(tmp_path, lambda n, r: None)
    blob = sealed_model()
    with client(transport) as store:
        upload(store, blob)
        first = store.model(MODEL)
        assert first.size == len(blob)
        second = sealed_model(version=2)
        store.upload(MODEL, io.BytesIO(second), size=len(second), key_version=2,
                     digest=hashlib.sha256(second).hexdigest())  # fmt: skip
        with pytest.raises(UploadRefused) as info:
            store.delete(MODEL, digest=first.digest)
        assert info.value.code == "digest_precondition_failed"
        deleted = store.delete(MODEL)
        assert deleted.deleted
        assert deleted.digest == "sha256:" + hashlib.sha256(second).hexdigest()
        with pytest.raises(ModelNotAvailable):
            store.model(MODEL)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="http"):
        StoreClient("ftp://x", identity=OWNER)
    with pytest.raises(TypeError, match="Identity"):
        StoreClient("http://x", identity="me")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retries"):
        StoreClient("http://x", identity=OWNER, retries=-1)
