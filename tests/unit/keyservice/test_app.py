"""The KeyService HTTP API in process (ASGI transport, in-memory SQLite, fake evidence)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sealserve._clock import ManualClock
from sealserve.config import KeyServiceSettings
from sealserve.crypto import (
    HpkeKeyPair,
    Identity,
    SymmetricKey,
    sign_request,
    unwrap,
    verify_signature,
    wrap,
)
from sealserve.keyservice import KeyService, Store, Vault, create_app
from sealserve.keyservice._metrics import PUBLIC_DENIAL_REASONS
from sealserve.protocol import join_model_id, wire
from tests.unit.keyservice.fakes import GOOD, OTHER, FakeJudge, fake_evidence, fake_report_data

DENIAL = wire.canonical_json(wire.DENIAL_BODY)


@dataclasses.dataclass
class Harness:
    service: KeyService
    client: httpx.AsyncClient
    clock: ManualClock
    owner: Identity
    user: Identity
    attestation: dict[str, Any]

    async def signed(
        self, identity: Identity, method: str, path: str, body: Any = None
    ) -> httpx.Response:
        content = b"" if body is None else wire.canonical_json(body)
        headers = sign_request(identity, method=method, path=path, body=content, clock=self.clock)
        response = await self.client.request(method, path, content=content, headers=headers)
        payload = wire.response_signing_payload(
            method=method,
            path=path,
            request_tag=wire.request_tag(headers),
            status=response.status_code,
            body=response.content,
        )
        signature = wire.b64decode(response.headers[wire.RESPONSE_SIGNATURE_HEADER])
        verify_signature(self.service.signing_public_key, payload, signature)
        return response

    def wrapped(self, kind: str, model_id: str, principal: Identity, version: int | None) -> str:
        info = wire.upload_info(
            kind,
            model_id=model_id,
            principal_id=principal.principal_id,
            version=version,
            keyservice_key=self.service.hpke_public_key,
        )
        self.last_key = SymmetricKey.generate().to_bytes()
        return wire.b64encode(wrap(self.service.hpke_public_key, self.last_key, info=info))

    async def setup_grant(self, name: str = "resnet") -> tuple[str, bytes, bytes]:
        """Register both, put a model key, grant the user, put a request key."""
        for who, role in ((self.owner, "owner"), (self.user, "user")):
            body = {"public_key": wire.b64encode(who.public_key_bytes), "role": role}
            r = await self.signed(who, "POST", "/v1/principals", body)
            assert r.status_code == 200, r.text
        mid = join_model_id(self.owner.principal_id, name)
        r = await self.signed(
            self.owner,
            "PUT",
            f"/v1/models/{mid}/key",
            {"version": 1, "wrapped_key": self.wrapped("model-key", mid, self.owner, 1)},
        )
        assert r.status_code == 200, r.text
        model_key = self.last_key
        r = await self.signed(
            self.owner,
            "PUT",
            f"/v1/models/{mid}/grants/{self.user.principal_id}",
            {"policy": {"measurements": [GOOD]}},
        )
        assert r.status_code == 200, r.text
        r = await self.signed(
            self.user,
            "PUT",
            f"/v1/models/{mid}/request-keys/{self.user.principal_id}",
            {
                "wrapped_key": self.wrapped("request-key", mid, self.user, None),
                "policy": {"measurements": [GOOD, OTHER]},
            },
        )
        assert r.status_code == 200, r.text
        return mid, model_key, self.last_key

    async def release(
        self,
        pairs: list[tuple[str, str]],
        *,
        measurement: str = GOOD,
        runtime: HpkeKeyPair | None = None,
        nonce: bytes | None = None,
        bind_key: bytes | None = None,
    ) -> tuple[httpx.Response, HpkeKeyPair, bytes]:
        runtime = runtime or HpkeKeyPair.generate()
        if nonce is None:
            r = await self.client.post("/v1/challenges")
            assert r.status_code == 201, r.text
            nonce = wire.b64decode(r.json()["nonce"])
        bound = bind_key if bind_key is not None else runtime.public_key_bytes()
        body = {
            "nonce": wire.b64encode(nonce),
            "evidence": wire.b64encode(fake_evidence(measurement, fake_report_data(bound, nonce))),
            "runtime_public_key": wire.b64encode(runtime.public_key_bytes()),
            "pairs": [{"user_id": u, "model_id": m} for u, m in pairs],
        }
        r = await self.client.post("/v1/releases", content=wire.canonical_json(body))
        return r, runtime, nonce


def make_service(store: Store, vault: Vault, clock: ManualClock, **settings: Any) -> KeyService:
    return KeyService(
        store=store,
        vault=vault,
        evidence_source=lambda rd: fake_evidence("aa" * 32, rd),
        verifier=FakeJudge(),
        settings=KeyServiceSettings(**settings),
        clock=clock,
        db_threads=1,
    )


def run(
    test: Callable[[Harness], Awaitable[None]],
    *,
    db_url: str = "sqlite+pysqlite:///:memory:",
    vault: Vault | None = None,
    hot_path: bool = True,
    **settings: Any,
) -> None:
    async def main() -> None:
        clock = ManualClock(start=1_800_000_000.0)
        with Store(db_url, pool_size=1) as store:
            service = make_service(
                store, vault or Vault(SymmetricKey.generate()), clock, **settings
            )
            transport = httpx.ASGITransport(app=create_app(service, hot_path=hot_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://ks") as client:
                nonce = b"n" * 32
                r = await client.get(f"/v1/attestation?nonce={wire.b64encode(nonce)}")
                assert r.status_code == 200, r.text
                harness = Harness(
                    service, client, clock, Identity.generate(), Identity.generate(), r.json()
                )
                await test(harness)

    asyncio.run(main())


def test_attestation_binds_both_keys_and_the_nonce() -> None:
    async def body(h: Harness) -> None:
        doc = h.attestation
        binding = wire.keyservice_binding(
            wire.b64decode(doc["hpke_public_key"]), wire.b64decode(doc["signing_public_key"])
        )
        evidence = json.loads(wire.b64decode(doc["evidence"]))
        assert wire.b64decode(evidence["report_data"]) == fake_report_data(binding, b"n" * 32)
        assert doc["keyservice_id"] == wire.fingerprint(binding)
        r = await h.client.get("/v1/attestation?nonce=short")
        assert r.status_code == 400

    run(body)


def test_full_flow_releases_the_keys_wrapped_to_the_runtime() -> None:
    async def body(h: Harness) -> None:
        mid, model_key, request_key = await h.setup_grant()
        uid = h.user.principal_id
        r, runtime, nonce = await h.release([(uid, mid)])
        assert r.status_code == 200, r.text
        doc = r.json()
        verify_signature(
            h.service.signing_public_key,
            wire.release_signing_payload(doc),
            wire.b64decode(doc["signature"]),
        )
        assert doc["nonce"] == wire.b64encode(nonce)
        assert doc["measurement"] == GOOD
        assert doc["expires_at"] == doc["issued_at"] + doc["ttl_s"]
        (item,) = doc["keys"]
        rk = runtime.public_key_bytes()
        both = unwrap(
            runtime,
            wire.b64decode(item["wrapped_keys"]),
            info=wire.release_info(
                model_id=mid,
                user_id=uid,
                model_key_version=1,
                request_key_version=1,
                runtime_key=rk,
            ),
        )
        got_model, got_request, session = both[:32], both[32:64], both[64:]
        assert (got_model, got_request) == (model_key, request_key)
        assert session == h.service.session_key(wire.fingerprint(rk))
        assert len(session) == 32
        assert doc["revocation_check_s"] == h.service.settings.revocation_check_s
        audit = h.service.store.audit()
        assert audit[-1].event == "release"
        assert audit[-1].measurement == GOOD
        assert audit[-1].actor == wire.fingerprint(rk)

    run(body)


def test_every_denial_is_the_same_bytes() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        stranger = Identity.generate().principal_id
        cases: dict[str, httpx.Response] = {}
        cases["measurement"] = (await h.release([(uid, mid)], measurement="33" * 32))[0]
        cases["unknown user"] = (await h.release([(stranger, mid)]))[0]
        cases["unknown model"] = (await h.release([(uid, mid + "x")]))[0]
        cases["another key"] = (
            await h.release([(uid, mid)], bind_key=HpkeKeyPair.generate().public_key_bytes())
        )[0]
        cases["unissued nonce"] = (await h.release([(uid, mid)], nonce=b"z" * 32))[0]
        ok, _, used = await h.release([(uid, mid)])
        assert ok.status_code == 200
        cases["replayed nonce"] = (await h.release([(uid, mid)], nonce=used))[0]
        r = await h.client.post("/v1/challenges")
        nonce = wire.b64decode(r.json()["nonce"])
        h.clock.advance(h.service.settings.challenge_ttl_s + 1)
        cases["expired nonce"] = (await h.release([(uid, mid)], nonce=nonce))[0]
        cases["malformed"] = await h.client.post("/v1/releases", content=b"{not json")
        cases["wrong shape"] = await h.client.post("/v1/releases", content=b'{"pairs": 3}')
        cases["oversized"] = await h.client.post(
            "/v1/releases", content=b"x" * (h.service.settings.max_body_bytes + 1)
        )
        for name, response in cases.items():
            assert response.status_code == 403, name
            assert response.content == DENIAL, name
        r = await h.client.get("/metrics")
        text = r.text
        for reason in ("access", "evidence", "nonce", "malformed"):
            line = f'sealserve_keyservice_denials_total{{reason="{reason}"}}'
            assert any(
                ln.startswith(line) and not ln.endswith(" 0.0") for ln in text.splitlines()
            ), reason
        assert (await h.client.get("/healthz")).status_code == 200

    run(body)


def test_revocation_takes_effect_for_the_next_release() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        before, _, _ = await h.release([(uid, mid)])
        assert before.status_code == 200
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/grants/{uid}")
        assert r.status_code == 200
        assert r.json()["revocation_epoch"] == before.json()["revocation_epoch"] + 1
        after, _, _ = await h.release([(uid, mid)])
        assert after.status_code == 403
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/grants/{uid}")
        assert r.status_code == 404

    run(body)


def test_a_denied_release_uses_up_its_nonce() -> None:
    """Denied for the measurement, or for evidence bound to another key: the same nonce with
    good evidence is then refused too (the fixed 403), and nothing is released or audited."""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        denials = (
            {"measurement": "33" * 32},
            {"bind_key": HpkeKeyPair.generate().public_key_bytes()},
        )
        for bad in denials:
            denied, _, nonce = await h.release([(uid, mid)], **bad)
            assert (denied.status_code, denied.content) == (403, DENIAL), bad
            retry, _, _ = await h.release([(uid, mid)], nonce=nonce)
            assert (retry.status_code, retry.content) == (403, DENIAL), bad
        assert not [e for e in h.service.store.audit() if e.event == "release"]
        # a fresh nonce with the same good evidence is released: only the nonce was refused
        ok, _, _ = await h.release([(uid, mid)])
        assert ok.status_code == 200, ok.text

    run(body)


def test_owners_and_users_act_only_on_their_own() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        mallory = Identity.generate()
        body_ = {"public_key": wire.b64encode(mallory.public_key_bytes), "role": "owner"}
        assert (await h.signed(mallory, "POST", "/v1/principals", body_)).status_code == 200
        attempts = [
            ("PUT", f"/v1/models/{mid}/key", {"version": 2, "wrapped_key": "AAAA"}),
            ("GET", f"/v1/models/{mid}", None),
            ("PUT", f"/v1/models/{mid}/grants/{uid}", {"policy": {"measurements": [OTHER]}}),
            ("DELETE", f"/v1/models/{mid}/grants/{uid}", None),
            ("DELETE", f"/v1/models/{mid}/request-keys/{uid}", None),
        ]
        for method, path, payload in attempts:
            r = await h.signed(mallory, method, path, payload)
            assert (r.status_code, r.content) == (403, DENIAL), (method, path)
        # a user cannot act as an owner, nor an owner as a user
        r = await h.signed(h.user, "GET", f"/v1/models/{mid}")
        assert r.status_code == 403
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/request-keys/{uid}")
        assert r.status_code == 403
        # the owner sees its model
        r = await h.signed(h.owner, "GET", f"/v1/models/{mid}")
        assert r.json() == {
            "model_id": mid,
            "owner_id": h.owner.principal_id,
            "key_version": 1,
            "grants": [uid],
        }

    run(body)


def test_signed_requests_are_replay_protected_and_checked() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        path = f"/v1/models/{mid}"
        headers = sign_request(h.owner, method="GET", path=path, body=b"", clock=h.clock)
        first = await h.client.get(path, headers=headers)
        assert first.status_code == 200
        replay = await h.client.get(path, headers=headers)
        assert (replay.status_code, replay.content) == (403, DENIAL)
        unsigned = await h.client.get(path)
        assert (unsigned.status_code, unsigned.content) == (403, DENIAL)
        stranger = Identity.generate()
        r = await h.signed(stranger, "GET", path)
        assert (r.status_code, r.content) == (403, DENIAL)
        # a body other than the one signed
        content = wire.canonical_json({"policy": {"measurements": [GOOD]}})
        uid = h.user.principal_id
        grant_path = f"/v1/models/{mid}/grants/{uid}"
        headers = sign_request(h.owner, method="PUT", path=grant_path, body=content, clock=h.clock)
        r = await h.client.put(grant_path, content=content + b" ", headers=headers)
        assert (r.status_code, r.content) == (403, DENIAL)

    run(body)


def test_versions_and_bad_bodies_after_authentication() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        path = f"/v1/models/{mid}/key"
        r = await h.signed(
            h.owner,
            "PUT",
            path,
            {"version": 1, "wrapped_key": h.wrapped("model-key", mid, h.owner, 1)},
        )
        assert r.status_code == 409
        assert "send version 2" in r.json()["error"]
        # a key wrapped for version 3 does not unwrap as version 2
        r = await h.signed(
            h.owner,
            "PUT",
            path,
            {"version": 2, "wrapped_key": h.wrapped("model-key", mid, h.owner, 3)},
        )
        assert r.status_code == 400
        assert "does not unwrap" in r.json()["error"]
        r = await h.signed(h.owner, "PUT", path, {"version": "two"})
        assert r.status_code == 400
        r = await h.signed(
            h.owner,
            "PUT",
            f"/v1/models/{mid}/grants/{h.user.principal_id}",
            {"policy": {"nonsense": 1}},
        )
        assert r.status_code == 400
        r = await h.signed(
            h.owner,
            "PUT",
            path,
            {"version": 2, "wrapped_key": h.wrapped("model-key", mid, h.owner, 2)},
        )
        assert r.status_code == 200
        assert r.json()["revocation_epoch"] == 1  # rotation bumps the epoch

    run(body)


def test_rate_limit_answers_429_with_retry_after() -> None:
    async def body(h: Harness) -> None:
        # the harness's attestation request took one of the three tokens
        path = f"/v1/attestation?nonce={wire.b64encode(b'm' * 32)}"
        statuses = [(await h.client.get(path)).status_code for _ in range(2)]
        assert statuses == [200, 200]
        r = await h.client.get(path)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1

    run(body, rate_limit_per_s=1.0, rate_limit_burst=3)


def test_challenges_are_stateless_and_single_use_spans_processes(tmp_path: Path) -> None:
    """Two KeyServices on one database and one master key (two processes, in effect): one
    identity, a challenge from either is good at the other, and each nonce and signed request
    is accepted once in all."""
    vault = Vault(SymmetricKey.generate())
    url = f"sqlite+pysqlite:///{tmp_path / 'ks.db'}"

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        with Store(url, pool_size=1) as store:
            other = make_service(store, vault, h.clock)
            assert other.keyservice_id == h.service.keyservice_id
            assert other.hpke_public_key == h.service.hpke_public_key
            assert other.signing_public_key == h.service.signing_public_key
            transport = httpx.ASGITransport(app=create_app(other))
            async with httpx.AsyncClient(transport=transport, base_url="http://ks") as client:
                # a challenge from this process, the release at the other
                r = await h.client.post("/v1/challenges")
                nonce = wire.b64decode(r.json()["nonce"])
                runtime = HpkeKeyPair.generate()
                first = release_body(runtime, nonce, [(uid, mid)])
                assert (await client.post("/v1/releases", content=first)).status_code == 200
                for replay_at in (client, h.client):  # replayed at either process
                    again = await replay_at.post("/v1/releases", content=first)
                    assert (again.status_code, again.content) == (403, DENIAL)
                # a signed request accepted by one process is a replay at the other
                path = f"/v1/models/{mid}"
                headers = sign_request(h.owner, method="GET", path=path, body=b"", clock=h.clock)
                assert (await h.client.get(path, headers=headers)).status_code == 200
                replay = await client.get(path, headers=headers)
                assert (replay.status_code, replay.content) == (403, DENIAL)
        releases = [e for e in h.service.store.audit() if e.event == "release"]
        assert len(releases) == 1

    run(body, db_url=url, vault=vault)


def release_body(runtime: HpkeKeyPair, nonce: bytes, pairs: list[tuple[str, str]]) -> bytes:
    key = runtime.public_key_bytes()
    return wire.canonical_json(
        {
            "nonce": wire.b64encode(nonce),
            "evidence": wire.b64encode(fake_evidence(GOOD, fake_report_data(key, nonce))),
            "runtime_public_key": wire.b64encode(key),
            "pairs": [{"user_id": u, "model_id": m} for u, m in pairs],
        }
    )


def test_hot_path_and_fastapi_routes_answer_alike() -> None:
    """The hot endpoints answer the same through HotPath and through FastAPI."""
    answers: dict[bool, list[tuple[int, Any]]] = {}

    def collect(hot: bool) -> Callable[[Harness], Awaitable[None]]:
        async def body(h: Harness) -> None:
            mid, _, _ = await h.setup_grant()
            uid = h.user.principal_id
            out: list[tuple[int, Any]] = []
            r = await h.client.get("/healthz")
            out.append((r.status_code, r.content))
            r = await h.client.post("/v1/challenges")
            out.append((r.status_code, sorted(r.json())))
            nonce = wire.b64decode(r.json()["nonce"])
            r = await h.client.post(
                "/v1/releases", content=release_body(HpkeKeyPair.generate(), nonce, [(uid, mid)])
            )
            out.append((r.status_code, sorted(r.json())))
            for content in (b"{", b"x" * (h.service.settings.max_body_bytes + 1)):
                r = await h.client.post("/v1/releases", content=content)
                out.append((r.status_code, r.content))
            r = await h.client.post("/v1/challenges", content=b"x" * 2_000_000)
            out.append((r.status_code, r.content))
            for content in (b"{", b"x" * (h.service.settings.max_body_bytes + 1)):
                r = await h.client.post("/v1/revocations", content=content)
                out.append((r.status_code, r.content))
            r = await h.client.get("/v1/releases")
            out.append((r.status_code, r.headers["content-type"]))
            answers[hot] = out

        return body

    run(collect(True))
    run(collect(False), hot_path=False)
    assert answers[True] == answers[False]
    assert [status for status, _ in answers[True]] == [200, 201, 200, 403, 403, 403, 403, 403, 405]


def test_openapi_document_describes_the_bodies() -> None:
    async def body(h: Harness) -> None:
        doc = (await h.client.get("/openapi.json")).json()
        assert "/v1/releases" in doc["paths"]
        ref = doc["paths"]["/v1/releases"]["post"]["requestBody"]["content"]
        assert ref["application/json"]["schema"]["$ref"] == "#/components/schemas/ReleaseIn"
        assert "ReleasePair" in doc["components"]["schemas"]

    run(body)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize("hot_path", [True, False])
def test_metrics_count_one_release_and_one_denial(hot_path: bool) -> None:
    """After one release and one denial (a measurement outside the owner's policy), /metrics
    shows one release, one denial under its public reason ("access") and none under any
    other, and the latency histogram of the release route has one 2xx and one 4xx
    observation.  (Issue 10 made the reasons coarse: see the next test.)"""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        before = _samples((await h.client.get("/metrics")).text)
        assert before[("sealserve_keyservice_releases_total", ())] == 0
        ok, _, _ = await h.release([(uid, mid)])
        assert ok.status_code == 200, ok.text
        denied, _, _ = await h.release([(uid, mid)], measurement="33" * 32)
        assert (denied.status_code, denied.content) == (403, DENIAL)
        after = _samples((await h.client.get("/metrics")).text)

        assert after[("sealserve_keyservice_releases_total", ())] == 1
        assert after[("sealserve_keyservice_released_pairs_total", ())] == 1
        denials = {
            dict(labels)["reason"]: value
            for (name, labels), value in after.items()
            if name == "sealserve_keyservice_denials_total"
        }
        assert set(denials) == set(PUBLIC_DENIAL_REASONS)
        assert denials == {r: (1.0 if r == "access" else 0.0) for r in PUBLIC_DENIAL_REASONS}
        hist = "sealserve_keyservice_request_seconds"
        for status in ("2xx", "4xx"):
            labels = (("route", "release"), ("status", status))
            assert after[(f"{hist}_count", labels)] == 1, status
            inf = tuple(sorted((*labels, ("le", "+Inf"))))
            assert after[(f"{hist}_bucket", inf)] == 1, status
            assert (f"{hist}_count", labels) not in before, status

    run(body, hot_path=hot_path)


@pytest.mark.parametrize("hot_path", [True, False])
def test_the_open_inference_protocol_health_probes_answer_on_both_paths(hot_path: bool) -> None:
    async def body(h: Harness) -> None:
        live = await h.client.get("/v2/health/live")
        ready = await h.client.get("/v2/health/ready")
        assert (live.status_code, live.json()) == (200, {"live": True})
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        h.service.store.close()  # what a stopping service looks like
        ready = await h.client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reason": "the KeyService's store is closed"}
        assert ready.headers["retry-after"] == "1"
        assert (await h.client.get("/v2/health/live")).status_code == 200

    run(body, hot_path=hot_path)
