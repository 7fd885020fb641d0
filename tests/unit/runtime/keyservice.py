"""A real KeyService in this process, for the runtime's unit tests (no network, no process).

The service, its app, the owner and user clients and the runtime's key broker are the real
ones; only the transport is in-process: the ASGI app runs on an event loop in a helper thread
and a synchronous httpx transport hands requests to it.  Evidence comes from a real simulated
platform (``issue_unlaunched_evidence``: the test plays the launched code), and everyone shares
one :class:`~sealserve._clock.ManualClock`, so TTLs expire when the test says so.
"""

from __future__ import annotations

import asyncio
import collections
import io
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from sealserve._clock import ManualClock
from sealserve.attest import Evidence, Policy
from sealserve.attest.tee import SimulatedPlatform
from sealserve.client import KeyServicePin, Owner, User
from sealserve.config import KeyServiceSettings
from sealserve.crypto import Identity, RequestKey, SymmetricKey, seal_model
from sealserve.ecall import runtime_launch_config
from sealserve.keyservice import EvidenceVerifier, KeyService, Store, Vault, create_app
from sealserve.runtime import KeyBroker

__all__ = ["InProcessKeyService", "MemorySource", "SyncASGITransport"]

_T = TypeVar("_T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class SyncASGITransport(httpx.BaseTransport):
    """A synchronous httpx transport that runs an ASGI app on a helper thread's loop."""

    def __init__(self, app: Any, loop: _Loop) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()
        forwarded = httpx.Request(
            request.method, request.url, headers=request.headers, content=content
        )

        async def go() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            response = await self._inner.handle_async_request(forwarded)
            body = await response.aread()
            return response.status_code, list(response.headers.raw), body

        status, headers, body = self._loop.run(go())
        return httpx.Response(status, headers=headers, content=body)


class _Fetched:
    def __init__(self, data: bytes, key_version: int, source: MemorySource) -> None:
        self._view = memoryview(data)
        self._key_version = key_version
        self._source = source

    @property
    def view(self) -> memoryview:
        return self._view

    @property
    def key_version(self) -> int:
        return self._key_version

    def release(self) -> None:
        self._source.released += 1


class MemorySource:
    """A :class:`~sealserve.runtime.ModelSource` over sealed models held in memory."""

    def __init__(self) -> None:
        self.models: dict[str, tuple[bytes, int]] = {}
        self.fetches: collections.Counter[str] = collections.Counter()
        self.released = 0
        self.gate: threading.Event | None = None

    def fetch(self, model_id: str, *, deadline: float | None) -> _Fetched:
        self.fetches[model_id] += 1
        if self.gate is not None:
            self.gate.wait(30)
        if model_id not in self.models:
            from sealserve.errors import ModelNotAvailable

            raise ModelNotAvailable(f"no model {model_id!r}")
        data, version = self.models[model_id]
        return _Fetched(data, version, self)


class InProcessKeyService:
    """The KeyService, an owner, a user and what a runtime needs to trust them."""

    def __init__(self, tmp: Path, *, release_ttl_s: float = 300.0) -> None:
        self.clock = ManualClock(start=1_800_000_000.0)
        self._loop = _Loop()
        self.platform = SimulatedPlatform(data_dir=tmp / "platform", clock=self.clock).open()
        self._store = Store("sqlite+pysqlite:///:memory:", pool_size=1)
        self._store.__enter__()
        self.settings = KeyServiceSettings(release_ttl_s=release_ttl_s)
        self.service = KeyService(
            store=self._store,
            vault=Vault(SymmetricKey.generate()),
            evidence_source=lambda rd: self.platform.issue_unlaunched_evidence(
                "keyservice", rd
            ).to_bytes(),
            verifier=EvidenceVerifier(trust=self.platform.trust_anchors(), clock=self.clock),
            settings=self.settings,
            clock=self.clock,
            db_threads=1,
        )
        self.transport = SyncASGITransport(create_app(self.service), self._loop)
        self.http = httpx.Client(transport=self.transport, base_url="http://ks")
        policy = Policy(measurements=frozenset({self.platform.measurement("keyservice")}))
        self.pin = KeyServicePin(policy=policy, trust=self.platform.trust_anchors())
        self.runtime_config = runtime_launch_config(keyservice_policy=policy, trust=self.pin.trust)
        self.runtime_policy = Policy(
            measurements=frozenset(
                {self.platform.measurement("runtime", config=self.runtime_config)}
            )
        )
        self.owner = self._principal(Owner)
        self.user = self._principal(User)
        self.calls: collections.Counter[str] = collections.Counter()
        self.source = MemorySource()
        self.model_keys: dict[str, SymmetricKey] = {}
        #: Play a host that withholds revocation polls.
        self.block_polls = False

    def _principal(self, cls: Any) -> Any:
        principal = cls(
            Identity.generate(),
            keyservice_url="http://ks",
            pin=self.pin,
            clock=self.clock,
            transport=self.transport,
        )
        principal.open()
        principal.register()
        return principal

    def close(self) -> None:
        self.owner.close()
        self.user.close()
        self.http.close()
        self._store.__exit__(None, None, None)
        self.platform.close()
        self._loop.close()

    # -- what the runtime is given -------------------------------------------------------------

    def relay(
        self, method: str, path: str, body: bytes, *, timeout: float | None
    ) -> tuple[int, bytes]:
        self.calls[path.split("?")[0]] += 1
        if self.block_polls and path.startswith("/v1/revocations"):
            raise OSError("the host does not relay polls")
        response = self.http.request(method, path, content=body or None)
        return response.status_code, response.content

    def evidence(self, report_data: bytes) -> Evidence:
        return self.platform.issue_unlaunched_evidence(
            "runtime", report_data, config=self.runtime_config
        )

    def broker(self, *, cache: bool = True) -> KeyBroker:
        return KeyBroker(
            relay=self.relay,
            pin=(self.pin.policy, self.pin.trust),
            evidence=self.evidence,
            cache=cache,
            clock=self.clock,
        )

    @property
    def releases(self) -> int:
        return self.calls["/v1/releases"]

    # -- what the owner and the user do --------------------------------------------------------

    def add_model(self, name: str, onnx: bytes, *, grant: bool = True) -> tuple[str, RequestKey]:
        """Seal, "store" (in :attr:`source`), put the key, grant, put a request key."""
        model_id = self.owner.model_id(name)
        key = SymmetricKey.generate()
        sealed = io.BytesIO()
        seal_model(key, io.BytesIO(onnx), sealed, model_id=model_id, version=1)
        self.source.models[model_id] = (sealed.getvalue(), 1)
        self.model_keys[model_id] = key
        self.owner.put_model_key(name, key)
        if grant:
            self.owner.grant(name, self.user.principal_id, self.runtime_policy)
        request_key = RequestKey.generate()
        self.user.put_request_key(model_id, request_key, self.runtime_policy)
        return model_id, request_key

    def rotate(self, name: str, onnx: bytes) -> None:
        """A new model key, the model re-sealed under it (version + 1)."""
        model_id = self.owner.model_id(name)
        key = SymmetricKey.generate()
        sealed = io.BytesIO()
        version = self.owner.model(name).key_version + 1
        seal_model(key, io.BytesIO(onnx), sealed, model_id=model_id, version=version)
        receipt = self.owner.rotate_model_key(name, key)
        self.source.models[model_id] = (sealed.getvalue(), receipt.version)
        self.model_keys[model_id] = key

    def update_reusing_key(self, name: str, onnx: bytes) -> bytes:
        """A new version of the model sealed under the key it already has (``owner upload
        --key-file``, ``upload_model(key=...)``): the next key version, the same key bytes.
        Returns the sealed bytes of the new version."""
        model_id = self.owner.model_id(name)
        key = self.model_keys[model_id]
        version = self.owner.model(name).key_version + 1
        sealed = io.BytesIO()
        seal_model(key, io.BytesIO(onnx), sealed, model_id=model_id, version=version)
        receipt = self.owner.rotate_model_key(name, key)
        self.source.models[model_id] = (sealed.getvalue(), receipt.version)
        return sealed.getvalue()
