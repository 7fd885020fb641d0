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
from sealserve.protocol import Release, ReleasedKeys, wire
from sealserve.runtime import KeyBroker, KeyCache
from tests.unit.runtime.graphs import dense_model
from tests.unit.runtime.keyservice import InProcessKeyService

USER = "ab" * 32
MODEL = "cd" * 32 + "/m"


def release(epoch: int, *, issued: float, ttl: float, pairs: list[tuple[str, str]]) -> Release:
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
    )


def test_keys_are_kept_until_the_keyservice_ttl() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    assert cache.get(USER, MODEL) is None
    assert cache.put(release(1, issued=clock.time(), ttl=10, pairs=[(USER, MODEL)]))
    assert cache.get(USER, MODEL) is not None
    clock.advance(9.9)
    assert cache.get(USER, MODEL) is not None
    clock.advance(0.1)
    assert cache.get(USER, MODEL) is None
    stats = cache.stats()
    assert (stats.hits, stats.expired, stats.entries) == (2, 1, 0)


def test_a_newer_epoch_drops_keys_of_older_epochs() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    other = ("ef" * 32, MODEL)
    cache.put(release(1, issued=clock.time(), ttl=100, pairs=[(USER, MODEL)]))
    cache.put(release(2, issued=clock.time(), ttl=100, pairs=[other]))
    assert cache.get(USER, MODEL) is None
    assert cache.get(*other) is not None
    assert cache.epoch == 2
    assert cache.stats().dropped_by_epoch == 1


def test_a_release_older_than_the_keys_held_is_refused() -> None:
    clock = ManualClock()
    cache = KeyCache(clock=clock)
    cache.put(release(5, issued=clock.time(), ttl=100, pairs=[(USER, MODEL)]))
    assert not cache.put(release(4, issued=clock.time(), ttl=100, pairs=[("ef" * 32, MODEL)]))
    assert cache.get("ef" * 32, MODEL) is None


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
