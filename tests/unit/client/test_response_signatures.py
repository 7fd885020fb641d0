"""The Owner and User clients refuse a KeyService answer that the attested KeyService did not
sign for that very request: a missing or malformed signature, one by another key, a replayed
answer to an earlier request, or an answer whose body or status was changed on the way.

The KeyService is the real one, in process (tests/unit/runtime/keyservice.py); between it and
the clients sits a transport that plays the untrusted proxy and tampers with its answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealserve.client import Owner, User
from sealserve.crypto import Identity, SymmetricKey, verify_signature
from sealserve.errors import KeyServiceError
from sealserve.protocol import wire
from tests.unit.runtime.keyservice import InProcessKeyService

MODES = [
    "missing",
    "malformed",
    "other_key",
    "replayed",
    "body_changed",
    "status_changed",
    "forged_denial",
]


class TamperingProxy(httpx.BaseTransport):
    """Forwards to the KeyService; when :attr:`mode` is set, tampers with the answers to
    signed requests (the attestation passes untouched, so the client is open and attested)."""

    def __init__(self, inner: httpx.BaseTransport, *, keyservice_key: bytes) -> None:
        self._inner = inner
        self.keyservice_key = keyservice_key
        self.mode: str | None = None
        self.tampered = 0
        self._seen: dict[tuple[str, str], tuple[int, list[tuple[bytes, bytes]], bytes]] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        body = response.read()
        status, headers = response.status_code, list(response.headers.raw)
        key = (request.method, request.url.path)
        if self.mode is None or request.url.path.endswith("/attestation"):
            self._seen[key] = (status, headers, body)
            return httpx.Response(status, headers=headers, content=body)
        self.tampered += 1
        name = wire.RESPONSE_SIGNATURE_HEADER.lower().encode()
        unsigned = [(k, v) for k, v in headers if k.lower() != name]
        if self.mode == "missing":
            return httpx.Response(status, headers=unsigned, content=body)
        if self.mode == "malformed":
            return httpx.Response(
                status, headers=[*unsigned, (name, b"!!not base64!!")], content=body
            )
        if self.mode == "other_key":
            payload = wire.response_signing_payload(
                method=request.method,
                path=request.url.raw_path.decode(),
                request_tag=wire.request_tag(dict(request.headers)),
                status=status,
                body=body,
            )
            # the payload is the one the KeyService signed: only the signing key differs
            real = wire.b64decode(dict(headers)[name].decode())
            verify_signature(self.keyservice_key, payload, real)
            forged = wire.b64encode(Identity.generate().sign(payload)).encode()
            return httpx.Response(status, headers=[*unsigned, (name, forged)], content=body)
        if self.mode == "replayed":
            old_status, old_headers, old_body = self._seen[key]
            return httpx.Response(old_status, headers=old_headers, content=old_body)
        if self.mode == "body_changed":
            doc = json.loads(body)
            doc["created"] = not doc["created"]
            return httpx.Response(status, headers=headers, content=wire.canonical_json(doc))
        if self.mode == "status_changed":
            return httpx.Response(201 if status == 200 else 200, headers=headers, content=body)
        assert self.mode == "forged_denial"
        return httpx.Response(403, content=wire.canonical_json(wire.DENIAL_BODY))


@pytest.fixture
def ks(tmp_path: Path) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path / "ks")
    try:
        yield harness
    finally:
        harness.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", [Owner, User])
def test_a_tampered_answer_is_refused(
    ks: InProcessKeyService, cls: type[Owner] | type[User], mode: str
) -> None:
    proxy = TamperingProxy(ks.transport, keyservice_key=ks.service.signing_public_key)
    principal = cls(
        Identity.generate(),
        keyservice_url="http://ks",
        pin=ks.pin,
        clock=ks.clock,
        transport=proxy,
    )
    with principal:
        assert principal.register() is True  # untouched: the real, signed answer is accepted
        proxy.mode = mode
        with pytest.raises(KeyServiceError, match="not signed by the attested KeyService") as info:
            principal.register()
        assert type(info.value) is KeyServiceError  # not AccessDenied, NotFound, ...
        assert proxy.tampered == 1
        proxy.mode = None
        assert principal.register() is False  # the next honest answer is accepted again


def test_an_owner_refuses_a_stale_answer_that_hides_a_rotation(ks: InProcessKeyService) -> None:
    """After a rotation, a proxy that replays the earlier ``GET /v1/models/<id>`` answer
    (key version 1) is caught: that answer was signed for another request."""
    proxy = TamperingProxy(ks.transport, keyservice_key=ks.service.signing_public_key)
    owner = Owner(
        Identity.generate(), keyservice_url="http://ks", pin=ks.pin, clock=ks.clock, transport=proxy
    )
    with owner:
        owner.register()
        owner.put_model_key("m", SymmetricKey.generate())
        assert owner.rotate_model_key("m", SymmetricKey.generate()).version == 2
        proxy.mode = "replayed"
        with pytest.raises(KeyServiceError, match="not signed by the attested KeyService"):
            owner.model("m")
