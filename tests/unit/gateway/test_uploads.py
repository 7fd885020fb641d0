"""The model upload API: signed, chunked, resumable, digest-checked, size-limited; every
hostile request gets its fixed error and changes nothing.  Each test runs through the
Starlette application and through the gateway's own HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from sealserve._clock import ManualClock
from sealserve.crypto import Identity, SymmetricKey, seal_model
from sealserve.gateway import Gateway, UploadOptions, UploadService
from sealserve.gateway._http import HttpServer
from sealserve.instance import SEALED_HEADER_BYTES, ModelStore
from sealserve.platform import ModelCatalog
from sealserve.protocol import (
    UPLOADS_PATH,
    chunk_path,
    commit_path,
    model_path,
    owner_headers,
    upload_path,
)
from tests.unit.gateway.lean import LeanClientTransport, MemoryTransport, encode_request
from tests.unit.gateway.test_app import FakePlatform

OWNER = Identity.generate()
OTHER = Identity.generate()
NAME = "resnet"
MODEL = f"{OWNER.principal_id}/{NAME}"
CHUNK = 4096
START = 1_900_000_000.0


def sealed_model(n: int = 10_000, model_id: str = MODEL, version: int = 1) -> bytes:
    out = io.BytesIO()
    seal_model(SymmetricKey.generate(), io.BytesIO(os.urandom(n)), out, model_id=model_id,
               version=version, chunk_size=1024)  # fmt: skip
    return out.getvalue()


class Env:
    """A gateway with a directory store and an upload service, reached by ``client``."""

    def __init__(self, root: Path, client: httpx.AsyncClient, gateway: Gateway) -> None:
        self.root = root
        self.client = client
        self.gateway = gateway
        assert gateway.uploads is not None
        self.uploads: UploadService = gateway.uploads
        store = self.uploads.store
        assert isinstance(store, ModelStore)
        self.store = store

    async def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        identity: Identity = OWNER,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        signed = owner_headers(identity, method=method, path=path, body=body, clock=CLOCK)
        signed.update(headers or {})
        return await self.client.request(method, path, content=body, headers=signed)

    async def begin(self, blob: bytes, **over: Any) -> dict[str, Any]:
        doc = {
            "model_id": MODEL,
            "size": len(blob),
            "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "key_version": 1,
        }
        doc.update(over)
        response = await self.send("POST", UPLOADS_PATH, json.dumps(doc).encode())
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def put_all(self, upload_id: str, blob: bytes, start: int = 0) -> httpx.Response:
        response = None
        for offset in range(start, len(blob), CHUNK):
            response = await self.send(
                "PUT", chunk_path(upload_id, offset), blob[offset : offset + CHUNK]
            )
            assert response.status_code == 200, response.text
        assert response is not None
        return response


CLOCK = ManualClock(start=START)
Body = Callable[[Env], Awaitable[None]]


def run(tmp_path: Path, body: Body, *, servers: tuple[str, ...] = ("asgi", "lean")) -> None:
    for server in servers:
        asyncio.run(_through(tmp_path / server, server, body))


def gateway_at(root: Path, **options: Any) -> Gateway:
    store = ModelStore(root / "store", clock=CLOCK)
    registry = CollectorRegistry()
    uploads = UploadService(
        store,
        staging_dir=root / "store" / "tmp" / "uploads",
        options=UploadOptions(chunk_bytes=CHUNK, max_model_bytes=1 << 20, **options),
        registry=registry,
        clock=CLOCK,
    )
    return Gateway(
        FakePlatform(), ModelCatalog(store), uploads=uploads, registry=registry, clock=CLOCK
    )


async def _through(root: Path, server: str, body: Body) -> None:
    global CLOCK
    CLOCK = ManualClock(start=START)  # each run starts at the same time
    gateway = gateway_at(root)
    transport: httpx.AsyncBaseTransport
    if server == "asgi":
        transport = httpx.ASGITransport(app=gateway.app)
    else:
        transport = LeanClientTransport(
            HttpServer(app=gateway.app, routes=gateway.lean_routes()), piece=1500
        )
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        await body(Env(root, client, gateway))


def code_of(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def staged(env: Env) -> list[str]:
    return sorted(p.name for p in (env.store.root / "tmp" / "uploads").glob("*"))


# -- the flow ----------------------------------------------------------------------------------


def test_an_owner_uploads_in_chunks_and_the_store_holds_exactly_the_sealed_bytes(
    tmp_path: Path,
) -> None:
    blob = sealed_model(20_000, version=3)

    async def body(env: Env) -> None:
        started = await env.begin(blob, key_version=3)
        assert (started["offset"], started["chunk_bytes"]) == (0, CHUNK)
        assert started["expires_at"] == START + 3600.0
        upload_id = started["upload_id"]
        last = await env.put_all(upload_id, blob)
        assert last.json()["offset"] == len(blob)
        status = await env.send("GET", upload_path(upload_id))
        assert status.json()["offset"] == len(blob)
        done = await env.send("POST", commit_path(upload_id))
        assert done.status_code == 200, done.text
        stored = done.json()
        assert stored["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert (stored["model_id"], stored["size"], stored["key_version"]) == (MODEL, len(blob), 3)
        assert env.store.read(MODEL)[1] == blob
        assert staged(env) == []  # the staged file became the blob (a rename)
        public = await env.client.get(model_path(MODEL))
        assert public.json() == stored
        assert env.uploads.metrics.bytes._value.get() == len(blob)
        text = (await env.client.get("/metrics")).text
        assert 'sealserve_gateway_uploads_total{outcome="committed"} 1.0' in text

    run(tmp_path, body)


def test_the_same_upload_resumes_and_a_resumption_must_declare_the_same_model(
    tmp_path: Path,
) -> None:
    blob = sealed_model()

    async def body(env: Env) -> None:
        first = await env.begin(blob)
        await env.send("PUT", chunk_path(first["upload_id"], 0), blob[:CHUNK])
        again = await env.begin(blob)  # same model, digest, size, version: the same upload
        assert (again["upload_id"], again["offset"]) == (first["upload_id"], CHUNK)
        named = await env.begin(blob, upload_id=first["upload_id"])
        assert named["offset"] == CHUNK
        other = sealed_model()
        doc = {"model_id": MODEL, "size": len(other), "key_version": 1,
               "digest": "sha256:" + hashlib.sha256(other).hexdigest(),
               "upload_id": first["upload_id"]}  # fmt: skip
        refused = await env.send("POST", UPLOADS_PATH, json.dumps(doc).encode())
        assert (refused.status_code, code_of(refused)) == (409, "upload_mismatch")
        assert (await env.send("GET", upload_path(first["upload_id"]))).json()["offset"] == CHUNK
        doc["upload_id"] = "A" * 22
        unknown = await env.send("POST", UPLOADS_PATH, json.dumps(doc).encode())
        assert (unknown.status_code, code_of(unknown)) == (404, "unknown_upload")

    run(tmp_path, body)


# -- hostile input -----------------------------------------------------------------------------


def test_only_the_owner_may_upload_and_bad_or_replayed_signatures_change_nothing(
    tmp_path: Path,
) -> None:
    blob = sealed_model()

    async def body(env: Env) -> None:
        doc = {"model_id": MODEL, "size": len(blob), "key_version": 1,
               "digest": "sha256:" + hashlib.sha256(blob).hexdigest()}  # fmt: skip
        raw = json.dumps(doc).encode()
        stranger = await env.send("POST", UPLOADS_PATH, raw, identity=OTHER)
        assert (stranger.status_code, stranger.json()["error"]["message"]) == (403, "access denied")
        upload_id = (await env.begin(blob))["upload_id"]
        path = chunk_path(upload_id, 0)
        chunk = blob[:CHUNK]
        good = owner_headers(OWNER, method="PUT", path=path, body=chunk, clock=CLOCK)
        forged = dict(good, **{"x-sealserve-signature": good["x-sealserve-signature"][::-1]})
        lying_key = owner_headers(OTHER, method="PUT", path=path, body=chunk, clock=CLOCK)
        lying_key["x-sealserve-principal"] = OWNER.principal_id
        other_body = dict(good)
        for headers, content in (
            (forged, chunk),
            (lying_key, chunk),
            (other_body, blob[1 : CHUNK + 1]),  # the signature covers the body
            (owner_headers(OTHER, method="PUT", path=path, body=chunk, clock=CLOCK), chunk),
            ({k: v for k, v in good.items() if k != "x-sealserve-public-key"}, chunk),
        ):
            refused = await env.client.put(path, content=content, headers=headers)
            assert (refused.status_code, code_of(refused)) == (403, "access_denied")
        accepted = await env.client.put(path, content=chunk, headers=good)
        assert accepted.status_code == 200
        replay = await env.client.put(path, content=chunk, headers=good)
        assert replay.status_code in (403, 409)  # the nonce, or the offset that moved on
        state = (await env.send("GET", upload_path(upload_id))).json()
        assert state["offset"] == CHUNK
        CLOCK.advance(301.0)  # past the replay window: the timestamp is refused
        stale = await env.client.get(
            upload_path(upload_id),
            headers=owner_headers(OWNER, method="GET", path=upload_path(upload_id),
                                  clock=ManualClock(start=START)),
        )  # fmt: skip
        assert (stale.status_code, code_of(stale)) == (403, "access_denied")
        peek = await env.send("GET", upload_path(upload_id), identity=OTHER)
        assert peek.status_code == 403  # another owner's upload is not even described

    run(tmp_path, body)


def test_sizes_offsets_and_lengths_are_limited_and_refusals_keep_the_upload(
    tmp_path: Path,
) -> None:
    blob = sealed_model()

    async def body(env: Env) -> None:
        doc = {"model_id": MODEL, "size": (1 << 20) + 1, "key_version": 1,
               "digest": "sha256:" + "0" * 64}  # fmt: skip
        big = await env.send("POST", UPLOADS_PATH, json.dumps(doc).encode())
        assert (big.status_code, code_of(big)) == (413, "payload_too_large")
        bad = await env.send("POST", UPLOADS_PATH, b'{"model_id": 1}')
        assert (bad.status_code, code_of(bad)) == (400, "bad_request")
        upload_id = (await env.begin(blob))["upload_id"]
        too_big = await env.send("PUT", chunk_path(upload_id, 0), blob[: CHUNK + 1])
        assert (too_big.status_code, code_of(too_big)) == (413, "payload_too_large")
        ahead = await env.send("PUT", chunk_path(upload_id, CHUNK), blob[CHUNK : 2 * CHUNK])
        assert (ahead.status_code, code_of(ahead)) == (409, "upload_offset_mismatch")
        no_offset = await env.send("PUT", upload_path(upload_id), blob[:CHUNK])
        assert (no_offset.status_code, code_of(no_offset)) == (400, "bad_request")
        await env.put_all(upload_id, blob[: 2 * CHUNK])
        past = await env.send("PUT", chunk_path(upload_id, 2 * CHUNK), blob[2 * CHUNK :] + b"x")
        assert (past.status_code, code_of(past)) == (413, "payload_too_large")
        early = await env.send("POST", commit_path(upload_id))
        assert (early.status_code, code_of(early)) == (409, "upload_incomplete")
        assert (await env.send("GET", upload_path(upload_id))).json()["offset"] == 2 * CHUNK
        await env.put_all(upload_id, blob, start=2 * CHUNK)
        assert (await env.send("POST", commit_path(upload_id))).status_code == 200

    run(tmp_path, body)


def test_a_wrong_digest_discards_the_upload_and_keeps_the_stored_model(tmp_path: Path) -> None:
    kept, blob = sealed_model(), sealed_model()

    async def body(env: Env) -> None:
        env.store.put(MODEL, kept, key_version=1)
        upload_id = (await env.begin(blob, digest="sha256:" + "ab" * 32))["upload_id"]
        await env.put_all(upload_id, blob)
        refused = await env.send("POST", commit_path(upload_id))
        assert (refused.status_code, code_of(refused)) == (422, "digest_mismatch")
        assert env.store.read(MODEL)[1] == kept
        assert staged(env) == []
        gone = await env.send("GET", upload_path(upload_id))
        assert (gone.status_code, code_of(gone)) == (404, "unknown_upload")

    run(tmp_path, body)


def test_a_model_in_the_clear_is_refused_at_its_first_chunk(tmp_path: Path) -> None:
    plain = b"\x08\x07\x12\x07pytorch" + os.urandom(9000)  # an ONNX file's first bytes

    async def body(env: Env) -> None:
        upload_id = (await env.begin(plain))["upload_id"]
        refused = await env.send("PUT", chunk_path(upload_id, 0), plain[:CHUNK])
        assert (refused.status_code, code_of(refused)) == (422, "not_a_sealed_model")
        assert staged(env) == []
        assert env.store.list() == []

    run(tmp_path, body)


def test_an_upload_may_not_roll_a_model_back_to_an_older_key_version(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.store.put(MODEL, sealed_model(version=4), key_version=4)
        blob = sealed_model()
        doc = {"model_id": MODEL, "size": len(blob), "key_version": 3,
               "digest": "sha256:" + hashlib.sha256(blob).hexdigest()}  # fmt: skip
        refused = await env.send("POST", UPLOADS_PATH, json.dumps(doc).encode())
        assert (refused.status_code, code_of(refused)) == (409, "stale_key_version")

    run(tmp_path, body)


def test_a_body_cut_short_writes_nothing_and_the_upload_resumes(tmp_path: Path) -> None:
    blob = sealed_model()

    async def body(env: Env) -> None:
        upload_id = (await env.begin(blob))["upload_id"]
        server = HttpServer(app=env.gateway.app, routes=env.gateway.lean_routes())
        path = chunk_path(upload_id, 0)
        chunk = blob[:CHUNK]
        headers = owner_headers(OWNER, method="PUT", path=path, body=chunk, clock=CLOCK)
        request = httpx.Request("PUT", f"http://gw{path}", headers=headers, content=chunk)
        conn = MemoryTransport(server, piece=512)
        conn.feed(encode_request(request, chunk)[: -CHUNK // 2])  # half the body, then gone
        await conn.run_until_quiet()
        conn.close()
        await conn.run_until_quiet()
        state = (await env.send("GET", upload_path(upload_id))).json()
        assert state["offset"] == 0
        assert (env.store.root / "tmp" / "uploads" / f"{upload_id}.part").stat().st_size == 0
        await env.put_all(upload_id, blob)
        assert (await env.send("POST", commit_path(upload_id))).status_code == 200

    run(tmp_path, body, servers=("lean",))


def test_uploads_survive_a_restart_and_expire_when_idle(tmp_path: Path) -> None:
    blob = sealed_model()

    async def body(env: Env) -> None:
        upload_id = (await env.begin(blob))["upload_id"]
        await env.put_all(upload_id, blob[: 2 * CHUNK])
        restarted = gateway_at(env.root)  # a new process over the same staging directory
        assert restarted.uploads is not None
        assert restarted.uploads.in_progress == 1
        transport = httpx.ASGITransport(app=restarted.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            again = Env(env.root, client, restarted)
            assert (await again.send("GET", upload_path(upload_id))).json()["offset"] == 2 * CHUNK
            await again.put_all(upload_id, blob, start=2 * CHUNK)
            done = await again.send("POST", commit_path(upload_id))
            assert done.status_code == 200, done.text  # the digest was rebuilt from disk
            second = (await again.begin(sealed_model(version=2), key_version=2))["upload_id"]
            CLOCK.advance(3601.0)
            expired = await again.send("GET", upload_path(second))
            assert (expired.status_code, code_of(expired)) == (404, "unknown_upload")
            assert staged(again) == []

    run(tmp_path, body, servers=("asgi",))


def test_too_many_uploads_are_refused_as_retryable(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        for _ in range(4):
            await env.begin(sealed_model(100))
        refused = await env.send(
            "POST",
            UPLOADS_PATH,
            json.dumps(
                {"model_id": MODEL, "size": 9, "key_version": 1, "digest": "sha256:" + "1" * 64}
            ).encode(),
        )
        assert (refused.status_code, code_of(refused)) == (429, "too_many_uploads")
        assert refused.json()["error"]["retryable"] is True
        assert refused.headers["retry-after"] == "1"

    run(tmp_path, body, servers=("asgi",))


def test_only_the_owner_deletes_and_only_the_version_it_names(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        manifest = env.store.put(MODEL, sealed_model(), key_version=1)
        base = model_path(MODEL)
        right = f"{base}?digest=sha256:{manifest.digest}"
        missing = await env.send("DELETE", base)
        assert (missing.status_code, code_of(missing)) == (400, "bad_request")
        wrong = await env.send("DELETE", f"{base}?digest=sha256:{'0' * 64}")
        assert (wrong.status_code, code_of(wrong)) == (412, "digest_precondition_failed")
        stranger = await env.send("DELETE", right, identity=OTHER)
        assert stranger.status_code == 403
        assert MODEL in env.store
        headers = owner_headers(OWNER, method="DELETE", path=right, clock=CLOCK)
        done = await env.client.delete(right, headers=headers)
        want = {"model_id": MODEL, "digest": f"sha256:{manifest.digest}", "deleted": True}
        assert done.json() == want
        assert MODEL not in env.store
        env.store.put(MODEL, sealed_model(version=2), key_version=2)
        replay = await env.client.delete(right, headers=headers)
        assert replay.status_code == 403
        assert MODEL in env.store
        gone = await env.client.get(model_path(f"{OTHER.principal_id}/none"))
        assert (gone.status_code, code_of(gone)) == (404, "unknown_model")

    run(tmp_path, body)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=f"chunk_bytes must be >= {SEALED_HEADER_BYTES}"):
        UploadOptions(chunk_bytes=SEALED_HEADER_BYTES - 1)
    with pytest.raises(ValueError, match="ttl_s must be a finite number > 0"):
        UploadOptions(ttl_s=0)
