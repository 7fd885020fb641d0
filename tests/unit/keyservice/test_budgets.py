"""Issue 10's availability attacks on the KeyService, reproduced in process, and the budgets
that stop them (:mod:`sealserve.keyservice._limits`).

* Item 2: one self-registered principal fills the replay memory with valid signed requests
  timestamped near the window's edge (and requests the rate limit refused used to be
  remembered too); an owner's revoke and new registrations were then refused.
* Item 6: a flood of ``POST /v1/challenges`` from the runtimes' own address made their
  releases fail with 429; garbage releases spent the budget legitimate runtimes needed.
"""

from __future__ import annotations

from typing import Any

import httpx

from sealserve._clock import ManualClock
from sealserve.crypto import HpkeKeyPair, Identity, sign_request
from sealserve.keyservice._metrics import DENIAL_REASONS, PUBLIC_DENIAL_REASONS, public_reason
from sealserve.protocol import wire
from tests.unit.keyservice.fakes import GOOD
from tests.unit.keyservice.test_app import DENIAL, Harness, _samples, run


async def _send_signed(
    h: Harness, headers: dict[str, str], method: str, path: str, body: bytes = b""
) -> httpx.Response:
    return await h.client.request(method, path, content=body, headers=headers)


def _sign(
    who: Identity, method: str, path: str, *, at: float, body: Any = None
) -> tuple[bytes, dict[str, str]]:
    content = b"" if body is None else wire.canonical_json(body)
    return content, sign_request(
        who, method=method, path=path, body=content, clock=ManualClock(start=at)
    )


async def _register(h: Harness, who: Identity, role: str) -> None:
    body = {"public_key": wire.b64encode(who.public_key_bytes), "role": role}
    r = await h.signed(who, "POST", "/v1/principals", body)
    assert r.status_code == 200, r.text


def test_one_principal_filling_its_share_cannot_lock_out_a_revoke() -> None:
    """Item 2.  The attacker (a self-registered owner) sends valid signed requests
    timestamped at the far edge of the replay window until its share is spent; its next ones
    get 429, while the victim owner's revoke and a stranger's registration go through."""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        attacker = Identity.generate()
        await _register(h, attacker, "owner")
        probe = f"/v1/models/{attacker.principal_id}/nothing"
        edge = h.clock.time() + h.service.settings.replay_window_s - 1
        statuses = []
        for _ in range(45):
            content, headers = _sign(attacker, "GET", probe, at=edge)
            statuses.append((await _send_signed(h, headers, "GET", probe, content)).status_code)
        # 404 (authenticated: the model does not exist) until its share is spent, then 429
        assert statuses[:30] == [404] * 30, statuses
        assert set(statuses[30:]) == {429}, statuses
        # The victim's revoke, and a newcomer's registration, are not affected.
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/grants/{uid}")
        assert r.status_code == 200, r.text
        await _register(h, Identity.generate(), "user")
        released, _, _ = await h.release([(uid, mid)])
        assert (released.status_code, released.content) == (403, DENIAL)

    # 30 requests per replay window per principal; a generous short-term rate.
    run(body, signed_requests_per_window=30, rate_limit_per_s=1000.0, rate_limit_burst=1000)


def test_a_request_refused_by_the_rate_limit_is_not_remembered() -> None:
    """Item 2: rate-limit before remembering.  A request refused with 429 left no used
    nonce: the same signed request is accepted once the bucket refilled (and once only)."""

    async def body(h: Harness) -> None:
        attacker = Identity.generate()
        await _register(h, attacker, "owner")
        probe = f"/v1/models/{attacker.principal_id}/nothing"
        sent = []
        for _ in range(3):
            content, headers = _sign(attacker, "GET", probe, at=h.clock.time())
            sent.append(headers)
            r = await _send_signed(h, headers, "GET", probe, content)
            if r.status_code == 429:
                break
        assert r.status_code == 429
        h.clock.advance(10)  # the bucket refills; the refused request is still in its window
        again = await _send_signed(h, sent[-1], "GET", probe)
        assert again.status_code == 404, again.text  # authenticated and accepted
        replayed = await _send_signed(h, sent[-1], "GET", probe)
        assert (replayed.status_code, replayed.content) == (403, DENIAL)

    run(body, rate_limit_per_s=1.0, rate_limit_burst=2)


def test_a_revoke_has_a_budget_of_its_own() -> None:
    """Item 2, revocation above all: an owner whose signed-request budget is spent (by a
    script gone wild, say) can still revoke."""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        path = f"/v1/models/{mid}"
        codes = [(await h.signed(h.owner, "GET", path)).status_code for _ in range(8)]
        assert 429 in codes, codes
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/grants/{uid}")
        assert r.status_code == 200, r.text

    # setup_grant spends 3 of the owner's tokens (register, key, grant)
    run(body, rate_limit_per_s=0.01, rate_limit_burst=6)


def test_a_challenge_flood_does_not_starve_a_runtimes_release() -> None:
    """Item 6.  Challenges have no budget, so a flood of them from the runtimes' address
    refuses nothing; a release is charged to the attested runtime's own key."""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        codes = {(await h.client.post("/v1/challenges")).status_code for _ in range(300)}
        assert codes == {201}
        ok, _, _ = await h.release([(uid, mid)])
        assert ok.status_code == 200, ok.text

    # A per-address limit of 5 requests would have refused the flood and then the release.
    run(body, rate_limit_per_s=0.01, rate_limit_burst=5)


def test_each_attested_runtime_has_its_own_release_budget() -> None:
    """Item 6.  Garbage releases naming a runtime's public key (but with evidence that does not
    bind it) spend nothing of that runtime's budget; a runtime that spends its own budget gets
    429 with Retry-After before any database work, and another runtime is not affected."""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        uid = h.user.principal_id
        victim, other = HpkeKeyPair.generate(), HpkeKeyPair.generate()
        for _ in range(20):
            garbage, _, _ = await h.release(
                [(uid, mid)],
                runtime=victim,
                bind_key=HpkeKeyPair.generate().public_key_bytes(),
            )
            assert (garbage.status_code, garbage.content) == (403, DENIAL)
        for _ in range(3):
            ok, _, _ = await h.release([(uid, mid)], runtime=victim)
            assert ok.status_code == 200, ok.text
        throttled, _, nonce = await h.release([(uid, mid)], runtime=victim)
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1
        ok, _, _ = await h.release([(uid, mid)], runtime=other)
        assert ok.status_code == 200, ok.text
        # the throttled release did not use its nonce: once the budget refills it is served
        h.clock.advance(1.0)
        retried, _, _ = await h.release([(uid, mid)], runtime=victim, nonce=nonce)
        assert retried.status_code == 200, retried.text

    run(body, runtime_releases_per_s=1.0, runtime_release_burst=3)


def test_metrics_do_not_tell_a_missing_grant_from_a_missing_request_key() -> None:
    """Item 7: ``/metrics`` answers anyone; a probe for a pair without a grant and one for a
    pair without a request key change it alike (the 403s are alike already)."""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        granted_no_rk = Identity.generate()
        await _register(h, granted_no_rk, "user")
        r = await h.signed(
            h.owner,
            "PUT",
            f"/v1/models/{mid}/grants/{granted_no_rk.principal_id}",
            {"policy": {"measurements": [GOOD]}},
        )
        assert r.status_code == 200
        stranger = Identity.generate().principal_id

        async def probe(user_id: str) -> tuple[bytes, str]:
            before = (await h.client.get("/metrics")).text
            denied, _, _ = await h.release([(user_id, mid)])
            after = (await h.client.get("/metrics")).text
            return denied.content, _delta(before, after)

        not_granted = await probe(stranger)
        no_request_key = await probe(granted_no_rk.principal_id)
        assert not_granted == no_request_key
        assert not_granted[0] == DENIAL
        assert not_granted[1] == "access=1.0"
        assert public_reason("not_granted") == public_reason("no_request_key") == "access"
        assert public_reason("unknown_principal") == public_reason("signature")

    run(body)


def test_every_denial_reason_has_a_public_label() -> None:
    for reason in DENIAL_REASONS:
        assert public_reason(reason) in PUBLIC_DENIAL_REASONS


def _delta(before: str, after: str) -> str:
    """How each denial counter moved (latency series differ in their timings anyway)."""
    old, new = _samples(before), _samples(after)
    moved = {
        dict(labels)["reason"]: new[key] - old.get(key, 0.0)
        for key in new
        for name, labels in [key]
        if name == "sealserve_keyservice_denials_total"
    }
    return ",".join(f"{reason}={value}" for reason, value in sorted(moved.items()) if value)


def test_ids_with_a_trailing_newline_are_refused_everywhere() -> None:
    """Item 7: ids are matched whole.  A trailing newline after an owner id, a model name or a
    user id in a path, a release pair or the principal header is never taken for the id."""

    async def body(h: Harness) -> None:
        mid, _, _ = await h.setup_grant()
        owner, name = mid.split("/")
        uid = h.user.principal_id
        for path in (
            f"/v1/models/{owner}%0A/{name}",
            f"/v1/models/{owner}/{name}%0A",
            f"/v1/models/{owner}/{name}/grants/{uid}%0A",
        ):
            method = "DELETE" if "/grants/" in path else "GET"
            content, headers = _sign(h.owner, method, path, at=h.clock.time())
            r = await _send_signed(h, headers, method, path, content)
            assert r.status_code in (400, 403, 404), (path, r.status_code)
            assert r.status_code != 200, path
        r = await h.signed(h.owner, "GET", f"/v1/models/{mid}")
        assert r.json()["grants"] == [uid]  # nothing was revoked
        for pair in ((uid + "\n", mid), (uid, mid + "\n"), (uid, f"{owner}\n/{name}")):
            denied, _, _ = await h.release([pair])
            assert (denied.status_code, denied.content) == (403, DENIAL), pair
        content, headers = _sign(h.owner, "GET", f"/v1/models/{mid}", at=h.clock.time())
        headers["x-sealserve-principal"] += "\n"
        r = await _send_signed(h, headers, "GET", f"/v1/models/{mid}", content)
        assert (r.status_code, r.content) == (403, DENIAL)

    run(body)
