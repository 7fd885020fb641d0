"""``POST /v1/revocations``: a runtime learns what access changed, sealed under its session key
(issue 10, item 9), and nobody else learns anything from the endpoint."""

from __future__ import annotations

import pytest

from sealserve.crypto import HpkeKeyPair, SymmetricKey, unwrap
from sealserve.errors import AccessDenied, KeyServiceError
from sealserve.protocol import RevocationPoll, wire
from tests.unit.keyservice.test_app import DENIAL, Harness, run


async def _session(h: Harness, runtime: HpkeKeyPair, uid: str, mid: str) -> SymmetricKey:
    """Release (uid, mid) to ``runtime`` and open the session key its release carries."""
    r, _, _ = await h.release([(uid, mid)], runtime=runtime)
    assert r.status_code == 200, r.text
    (item,) = r.json()["keys"]
    secret = unwrap(
        runtime,
        wire.b64decode(item["wrapped_keys"]),
        info=wire.release_info(
            model_id=mid,
            user_id=uid,
            model_key_version=item["model_key_version"],
            request_key_version=item["request_key_version"],
            runtime_key=runtime.public_key_bytes(),
        ),
    )
    assert len(secret) == wire.RELEASED_SECRET_BYTES
    return SymmetricKey.from_bytes(secret[64:])


def test_a_poll_answers_what_changed_since_its_epoch() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        runtime = HpkeKeyPair.generate()
        key = await _session(h, runtime, uid, mid)
        key_id = wire.fingerprint(runtime.public_key_bytes())

        async def poll(since: int) -> tuple[int, bytes, RevocationPoll]:
            p = RevocationPoll(session_key=key, runtime_key_id=key_id, since=since)
            r = await h.client.post("/v1/revocations", content=p.body())
            return r.status_code, r.content, p

        status, content, p = await poll(0)
        answer = p.open(status, content)
        assert (answer.epoch, answer.changes, answer.complete) == (0, (), True)
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/grants/{uid}")
        assert r.status_code == 200
        status, content, p = await poll(0)
        assert p.open(status, content).changes == ((1, mid, uid),)
        # The host cannot replay this answer to a later poll (another nonce), nor read it.
        later = RevocationPoll(session_key=key, runtime_key_id=key_id, since=0)
        with pytest.raises(KeyServiceError):
            later.open(status, content)
        assert mid.encode() not in content
        assert uid.encode() not in content

    run(body)


def test_a_poll_not_sealed_under_the_runtimes_session_key_is_the_fixed_denial() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        runtime = HpkeKeyPair.generate()
        await _session(h, runtime, uid, mid)
        key_id = wire.fingerprint(runtime.public_key_bytes())
        forged = RevocationPoll(session_key=SymmetricKey.generate(), runtime_key_id=key_id, since=0)
        cases = [
            forged.body(),
            b"{not json",
            wire.canonical_json({"runtime_key_id": key_id, "poll": "AAAA"}),
            wire.canonical_json({"runtime_key_id": key_id + "\n", "poll": "AAAA"}),
        ]
        for content in cases:
            r = await h.client.post("/v1/revocations", content=content)
            assert (r.status_code, r.content) == (403, DENIAL), content
            with pytest.raises(AccessDenied):
                forged.open(r.status_code, r.content)

    run(body)


def test_polls_are_charged_to_the_runtimes_own_budget() -> None:
    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        runtime, other = HpkeKeyPair.generate(), HpkeKeyPair.generate()
        keys = {
            wire.fingerprint(r.public_key_bytes()): await _session(h, r, uid, mid)
            for r in (runtime, other)
        }
        statuses = []
        for key_id, key in [*[next(iter(keys.items()))] * 3, list(keys.items())[1]]:
            p = RevocationPoll(session_key=key, runtime_key_id=key_id, since=0)
            statuses.append((await h.client.post("/v1/revocations", content=p.body())).status_code)
        assert statuses == [200, 200, 429, 200]

    run(body, runtime_polls_per_s=0.01, runtime_poll_burst=2)
