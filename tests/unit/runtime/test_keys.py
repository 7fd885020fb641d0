"""Released keys inside the runtime: the cache's TTL and epochs, the broker's checks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from sealserve._clock import ManualClock
from sealserve.attest import Policy
from sealserve.crypto import RequestKey, SymmetricKey
from sealserve.errors import AccessDenied, AttestationError, KeyServiceError
from sealserve.protocol import Release, ReleasedKeys, RevocationAnswer, wire
from sealserve.runtime import KeyBroker, KeyCache
from sealserve.runtime._keys import DENIED_PAIR_TTL_S
from tests.unit.runtime.graphs import dense_model
from tests.unit.runtime.keyservice import InProcessKeyService

USER = "ab" * 32
MODEL = "cd" * 32 + "/m"


def release(
    epoch: int, *, issued: float, ttl: float, pairs: list[tuple[str, str]], check_s: float = 5.0
) -> Release:
    keys = {
        pair: ReleasedKeys(
            user_id=pair[0],
            model_id=pair[1],
            model_key=SymmetricKey.generate(),
            model_key_version=1,
            request_key=RequestKey.generate(),
            request_key_version=1,
        )
        for pair in pairs
    }
    return Release(
        keys=keys,
        revocation_epoch=epoch,
        issued_at=issued,
        expires_at=issued + ttl,
        measurement="00" * 32,
        revocation_check_s=check_s,
        session_key=SESSION,
    )


SESSION = SymmetricKey.generate()


def test_keys_are_kept_until_the_keyservice_ttl() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    assert cache.get(USER, MODEL) is None
    assert cache.put(release(1, issued=clock.time(), ttl=10, pairs=[(USER, MODEL)], check_s=60))
    assert cache.get(USER, MODEL) is not None
    clock.advance(9.9)
    assert cache.get(USER, MODEL) is not None
    clock.advance(0.1)
    assert cache.get(USER, MODEL) is None
    stats = cache.stats()
    assert (stats.hits, stats.expired, stats.entries) == (2, 1, 0)


def test_keys_are_used_only_while_confirmed_within_the_check_bound() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    cache.put(release(1, issued=clock.time(), ttl=300, pairs=[(USER, MODEL)], check_s=5))
    clock.advance(4.9)
    assert cache.get(USER, MODEL) is not None
    clock.advance(0.1)
    assert cache.get(USER, MODEL) is None  # unconfirmed for the bound: not used
    assert cache.lookup(USER, MODEL) is not None  # still held, for a poll to confirm
    ticket = cache.poll_ticket()
    assert ticket is not None
    assert (ticket.since, ticket.session_key) == (1, SESSION)
    cache.apply(RevocationAnswer(epoch=1, changes=(), complete=True), sent_at=clock.monotonic())
    assert cache.get(USER, MODEL) is not None


def test_a_poll_drops_exactly_the_keys_a_change_touched() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    other_user, other_model = "ef" * 32, "cd" * 32 + "/n"
    cache.put(
        release(
            1,
            issued=clock.time(),
            ttl=300,
            pairs=[(USER, MODEL), (other_user, MODEL), (USER, other_model)],
        )
    )
    sent = clock.monotonic()
    answer = RevocationAnswer(
        epoch=3, changes=((2, MODEL, USER), (3, other_model, None)), complete=True
    )
    assert cache.apply(answer, sent_at=sent) == 2
    assert cache.get(USER, MODEL) is None  # revoked
    assert cache.get(USER, other_model) is None  # its model key was rotated
    assert cache.get(other_user, MODEL) is not None  # untouched
    assert cache.epoch == 3
    assert cache.stats().dropped_by_epoch == 2
    # A release newer than a change is not touched by it.
    cache.put(release(4, issued=clock.time(), ttl=300, pairs=[(USER, MODEL)]))
    cache.apply(RevocationAnswer(epoch=4, changes=((4, MODEL, USER),), complete=True), sent_at=sent)
    assert cache.get(USER, MODEL) is not None
    # An incomplete answer drops every key older than its epoch.
    cache.apply(RevocationAnswer(epoch=9, changes=(), complete=False), sent_at=sent)
    assert cache.stats().entries == 0


def test_a_release_older_than_the_confirmed_epoch_is_refused() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    cache.put(release(5, issued=clock.time(), ttl=100, pairs=[(USER, MODEL)]))
    cache.apply(RevocationAnswer(epoch=5, changes=(), complete=True), sent_at=0.0)
    assert not cache.put(release(4, issued=clock.time(), ttl=100, pairs=[("ef" * 32, MODEL)]))
    assert cache.get("ef" * 32, MODEL) is None


def test_a_denied_pair_is_remembered_briefly() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    cache.deny(USER, MODEL)
    assert cache.denied(USER, MODEL)
    assert not cache.denied("ef" * 32, MODEL)
    clock.advance(DENIED_PAIR_TTL_S)
    assert not cache.denied(USER, MODEL)
    cache.deny(USER, MODEL)
    cache.put(release(1, issued=clock.time(), ttl=100, pairs=[(USER, MODEL)]))
    assert not cache.denied(USER, MODEL)  # a release for the pair ends its denial


@pytest.fixture
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path_factory.mktemp("ks"))
    try:
        yield harness
    finally:
        harness.close()


def test_the_broker_releases_once_then_serves_from_its_cache(ks: InProcessKeyService) -> None:
    model_id, request_key = ks.add_model("m", dense_model(1))
    broker = ks.broker()
    first = broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    second = broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    assert first.released
    assert not second.released
    assert second.seconds == 0
    assert first.keys.request_key == request_key
    assert ks.releases == 1
    assert ks.calls["/v1/attestation"] == 1


def test_concurrent_requests_for_one_pair_share_one_release(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(2))
    broker = ks.broker()
    barrier = threading.Barrier(6)
    results = []

    def one() -> None:
        barrier.wait()
        results.append(broker.keys_for(ks.user.principal_id, model_id, deadline=None))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6
    assert len({id(r.keys) for r in results}) == 1
    assert ks.releases == 1


def test_a_keyservice_outside_the_pinned_policy_is_not_trusted(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(3))
    broker = KeyBroker(
        relay=ks.relay,
        pin=(Policy(measurements=frozenset({"ee" * 32})), ks.pin.trust),
        evidence=ks.evidence,
        clock=ks.clock,
    )
    with pytest.raises(AttestationError):
        broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    assert ks.releases == 0  # nothing was asked of an untrusted KeyService


def test_keys_forged_by_the_host_are_refused(ks: InProcessKeyService) -> None:
    """The relay is the untrusted host: a release it alters (here: keys of its own making,
    signed by nobody the runtime attested) is refused, every time."""
    model_id, _ = ks.add_model("m", dense_model(4))

    def forging_relay(
        method: str, path: str, body: bytes, *, timeout: float | None
    ) -> tuple[int, bytes]:
        status, answer = ks.relay(method, path, body, timeout=timeout)
        if path.startswith("/v1/releases") and status == 200:
            doc = json.loads(answer)
            doc["revocation_epoch"] = int(doc["revocation_epoch"]) + 1000
            answer = wire.canonical_json(doc)
        return status, answer

    broker = KeyBroker(
        relay=forging_relay,
        pin=(ks.pin.policy, ks.pin.trust),
        evidence=ks.evidence,
        clock=ks.clock,
    )
    with pytest.raises(KeyServiceError, match="not signed by the attested KeyService"):
        broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    assert ks.calls["/v1/attestation"] == 2  # it attested once more before giving up


def test_a_keyservice_that_restarted_is_attested_again(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(5))
    broker = ks.broker()
    broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    # The runtime's attestation of the KeyService is stale: as if it had restarted with new
    # keys, its releases no longer verify against the signing key the runtime attested.
    session = broker._session
    assert session is not None
    object.__setattr__(session.keyservice, "signing_public_key", b"\x00" * 32)
    ks.clock.advance(ks.settings.release_ttl_s + 1)
    result = broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    assert result.released
    assert ks.calls["/v1/attestation"] == 2


def test_a_denial_is_access_denied(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(6), grant=False)
    with pytest.raises(AccessDenied):
        ks.broker().keys_for(ks.user.principal_id, model_id, deadline=None)


def test_an_unreachable_keyservice_is_a_retryable_error(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(7))

    def busy(method: str, path: str, body: bytes, *, timeout: float | None) -> tuple[int, bytes]:
        return 503, b""

    broker = KeyBroker(relay=busy, pin=(ks.pin.policy, ks.pin.trust), evidence=ks.evidence)
    with pytest.raises(KeyServiceError) as info:
        broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    assert info.value.retryable


def test_a_denied_pair_does_not_cost_a_release_per_request(ks: InProcessKeyService) -> None:
    """Issue 10, item 6: garbage requests for a pair the KeyService refuses (through the
    gateway) no longer make a full attested release each: the denial is remembered for a few
    seconds."""
    model_id, _ = ks.add_model("m", dense_model(5), grant=False)
    broker = ks.broker()
    for _ in range(20):
        with pytest.raises(AccessDenied):
            broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    assert ks.releases == 1
    assert broker.cache.stats().denied_hits == 19
    ks.owner.grant("m", ks.user.principal_id, ks.runtime_policy)
    ks.clock.advance(DENIED_PAIR_TTL_S)
    assert broker.keys_for(ks.user.principal_id, model_id, deadline=None).released
    assert ks.releases == 2


def test_a_hit_past_half_the_bound_polls_in_the_background(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(6))
    broker = ks.broker()
    try:
        broker.keys_for(ks.user.principal_id, model_id, deadline=None)
        ks.clock.advance(broker.cache.check_s * 0.6)
        hit = broker.keys_for(ks.user.principal_id, model_id, deadline=None)
        assert (hit.released, hit.seconds) == (False, 0.0)  # served at once
        poll = broker._poll
        assert poll is not None
        poll.result(30)
        assert broker.cache.stats().polls == 1
        assert ks.calls["/v1/revocations"] == 1
        ks.clock.advance(broker.cache.check_s * 0.6)  # confirmed by the poll: still good
        assert broker.cache.get(ks.user.principal_id, model_id) is not None
    finally:
        broker.close()


def test_prepare_attests_the_keyservice_once_before_any_model(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(8))
    broker = ks.broker()
    assert broker.prepare(deadline=None) > 0
    assert ks.calls["/v1/attestation"] == 1
    assert ks.releases == 0  # no model was asked for: nothing released
    assert broker.prepare(deadline=None) == 0  # already attested
    first = broker.keys_for(ks.user.principal_id, model_id, deadline=None)
    assert first.released
    assert ks.calls["/v1/attestation"] == 1  # the release used the attestation made at start


def test_prepare_refuses_a_keyservice_outside_the_pin_and_baseline_mode_skips_it(
    ks: InProcessKeyService,
) -> None:
    untrusting = KeyBroker(
        relay=ks.relay,
        pin=(Policy(measurements=frozenset({"ee" * 32})), ks.pin.trust),
        evidence=ks.evidence,
        clock=ks.clock,
    )
    with pytest.raises(AttestationError):
        untrusting.prepare(deadline=None)
    baseline = ks.broker(cache=False)
    calls = ks.calls["/v1/attestation"]
    assert baseline.prepare(deadline=None) == 0
    assert ks.calls["/v1/attestation"] == calls
