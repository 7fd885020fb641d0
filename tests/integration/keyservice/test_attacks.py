"""Every attack case of the issue gets the one fixed 403, and the service stays up."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import httpx
import pytest

from sealserve.attest import Evidence, Policy
from sealserve.attest._simulated_evidence import sign_simulated
from sealserve.client import Owner, User
from sealserve.crypto import HpkeKeyPair, Identity, RequestKey, SymmetricKey, sign_request
from sealserve.protocol import join_model_id, wire
from tests.integration.keyservice.conftest import KeyServiceProcess
from tests.integration.keyservice.simruntime import SimulatedRuntime, probe_measurement

DENIAL = wire.canonical_json(wire.DENIAL_BODY)


@dataclasses.dataclass
class World:
    ks: KeyServiceProcess
    owner: Owner
    user: User
    model_id: str
    runtime: SimulatedRuntime
    http: httpx.Client

    def challenge(self) -> bytes:
        r = self.http.post("/v1/challenges")
        assert r.status_code == 201
        return wire.b64decode(r.json()["nonce"])

    def post_release(
        self,
        *,
        nonce: bytes,
        evidence: Evidence,
        key: bytes,
        pairs: list[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        body = {
            "nonce": wire.b64encode(nonce),
            "evidence": wire.b64encode(evidence.to_bytes()),
            "runtime_public_key": wire.b64encode(key),
            "pairs": [
                {"user_id": u, "model_id": m}
                for u, m in (pairs or [(self.user.principal_id, self.model_id)])
            ],
        }
        return self.http.post("/v1/releases", content=wire.canonical_json(body))


@pytest.fixture
def world(ks: KeyServiceProcess) -> Iterator[World]:
    probe = Policy(measurements=frozenset({probe_measurement(ks.platform)}))
    owner = Owner(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    user = User(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    with owner, user:
        owner.register()
        user.register()
        mid = owner.model_id("guarded")
        owner.put_model_key("guarded", SymmetricKey.generate())
        owner.grant("guarded", user.principal_id, probe)
        user.put_request_key(mid, RequestKey.generate(), probe)
        runtime = SimulatedRuntime(ks)
        with ks.http() as http:
            yield World(ks, owner, user, mid, runtime, http)
        runtime.close()


def assert_denied(response: httpx.Response, case: str) -> None:
    assert response.status_code == 403, (case, response.status_code, response.text)
    assert response.content == DENIAL, case


def test_release_attacks_are_denied_alike(world: World) -> None:
    platform = world.ks.platform
    runtime_key = HpkeKeyPair.generate().public_key_bytes()

    def good_evidence(nonce: bytes, key: bytes = runtime_key) -> Evidence:
        return platform.issue_unlaunched_evidence(
            "attest-probe",
            world.runtime.session.report_data(nonce)
            if key == world.runtime.session.public_key
            else _report_data(key, nonce),
        )

    # the baseline works
    nonce = world.challenge()
    ok = world.post_release(nonce=nonce, evidence=good_evidence(nonce), key=runtime_key)
    assert ok.status_code == 200, ok.text

    # replayed nonce
    assert_denied(
        world.post_release(nonce=nonce, evidence=good_evidence(nonce), key=runtime_key),
        "replayed nonce",
    )
    # a nonce never issued
    fake = b"\x07" * 32
    assert_denied(
        world.post_release(nonce=fake, evidence=good_evidence(fake), key=runtime_key),
        "unissued nonce",
    )
    # evidence for another public key
    nonce = world.challenge()
    other = HpkeKeyPair.generate().public_key_bytes()
    assert_denied(
        world.post_release(nonce=nonce, evidence=good_evidence(nonce, other), key=runtime_key),
        "evidence for another key",
    )
    # a measurement outside the policy (genuine evidence of another entry)
    nonce = world.challenge()
    keyservice_evidence = platform.issue_unlaunched_evidence(
        "keyservice", _report_data(runtime_key, nonce)
    )
    assert_denied(
        world.post_release(nonce=nonce, evidence=keyservice_evidence, key=runtime_key),
        "measurement not in the policy",
    )
    # ... and the same nonce again with good evidence: a denial used the nonce up
    assert_denied(
        world.post_release(nonce=nonce, evidence=good_evidence(nonce), key=runtime_key),
        "good evidence after a denial, same nonce",
    )
    # a debug runtime (the policy does not allow debug)
    nonce = world.challenge()
    debug = platform.issue_unlaunched_evidence(
        "attest-probe", _report_data(runtime_key, nonce), debug=True
    )
    assert_denied(world.post_release(nonce=nonce, evidence=debug, key=runtime_key), "debug")
    assert_denied(
        world.post_release(nonce=nonce, evidence=good_evidence(nonce), key=runtime_key),
        "good evidence after a debug denial, same nonce",
    )
    # a forged simulated quote: signed by a key that is not the platform's
    nonce = world.challenge()
    forged = sign_simulated(
        Identity.generate(),  # not the platform key
        measurement=bytes.fromhex(probe_measurement(platform)),
        report_data=_report_data(runtime_key, nonce),
        debug=False,
        tcb_status="UpToDate",
        entry="attest-probe",
        issued_at=int(time.time()),
    )
    assert_denied(world.post_release(nonce=nonce, evidence=forged, key=runtime_key), "forged")
    # a genuine quote with one flipped byte
    nonce = world.challenge()
    genuine = good_evidence(nonce)
    raw = bytearray(genuine.to_bytes())
    raw[-5] ^= 0x01
    body = {
        "nonce": wire.b64encode(nonce),
        "evidence": wire.b64encode(bytes(raw)),
        "runtime_public_key": wire.b64encode(runtime_key),
        "pairs": [{"user_id": world.user.principal_id, "model_id": world.model_id}],
    }
    assert_denied(world.http.post("/v1/releases", content=wire.canonical_json(body)), "flipped")
    # a pair that is not granted: an unknown user, and another owner's model
    for pairs, case in (
        ([(Identity.generate().principal_id, world.model_id)], "unknown user"),
        ([(world.user.principal_id, join_model_id("f" * 64, "guarded"))], "other owner"),
        (
            [
                (world.user.principal_id, world.model_id),
                (world.user.principal_id, world.owner.model_id("absent")),
            ],
            "one pair of two not granted",
        ),
    ):
        nonce = world.challenge()
        assert_denied(
            world.post_release(
                nonce=nonce, evidence=good_evidence(nonce), key=runtime_key, pairs=pairs
            ),
            case,
        )
    # malformed and oversized bodies
    for content, case in (
        (b"", "empty"),
        (b"[]", "array"),
        (b'{"nonce": 1}', "wrong types"),
        (b"\xff\xfe", "not utf-8"),
        (b"{" * 10000, "deep"),
        (b"x" * (world.ks.settings.max_body_bytes + 1), "oversized"),
    ):
        assert_denied(world.http.post("/v1/releases", content=content), case)
    assert world.http.get("/healthz").status_code == 200
    # the legitimate runtime still gets its keys
    assert world.runtime.release([(world.user.principal_id, world.model_id)]).keys


def test_signed_request_attacks_are_denied_alike(world: World) -> None:
    path = f"/v1/models/{world.model_id}"
    headers = sign_request(world.owner.identity, method="GET", path=path, body=b"")
    assert world.http.get(path, headers=headers).status_code == 200
    assert_denied(world.http.get(path, headers=headers), "replayed request")
    # another owner's model id: a registered owner acting on someone else's model
    mallory = Owner(Identity.generate(), keyservice_url=world.ks.url, pin=world.ks.pin())
    with mallory:
        mallory.register()
        uid = world.user.principal_id
        for method, target, payload in (
            ("GET", path, None),
            ("DELETE", f"{path}/grants/{uid}", None),
            (
                "PUT",
                f"{path}/grants/{mallory.principal_id}",
                {"policy": {"measurements": ["ab" * 32]}},
            ),
            ("PUT", f"{path}/key", {"version": 2, "wrapped_key": "AAAA"}),
        ):
            content = b"" if payload is None else wire.canonical_json(payload)
            h = sign_request(mallory.identity, method=method, path=target, body=content)
            assert_denied(world.http.request(method, target, content=content, headers=h), target)
    # oversized body on a signed endpoint: refused before it is read
    big = b"x" * (world.ks.settings.max_body_bytes + 1)
    r = world.http.put(f"{path}/key", content=big)
    assert r.status_code == 413
    assert world.http.get("/healthz").status_code == 200


def _report_data(key: bytes, nonce: bytes) -> bytes:
    from sealserve.attest import report_data_for

    return report_data_for(key, nonce)
