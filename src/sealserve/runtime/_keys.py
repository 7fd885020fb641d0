"""Keys inside the runtime: released by the attested KeyService, cached as it allows.

:class:`KeyBroker` obtains the keys of a (user, model) pair the way docs/keyservice.md
prescribes, through the host's relay (which sees only ciphertext and public data):

1. attest the KeyService once (``GET /v1/attestation`` with a fresh nonce, checked against
   the policy and trust anchors pinned in the runtime's *measured* launch config);
2. ask for a challenge, obtain evidence that binds the runtime's HPKE public key to its
   nonce, and send the release request;
3. open the release: it must be signed by the attested KeyService for this key pair and
   nonce, or it is refused.

:class:`KeyCache` keeps released keys until the KeyService's ``expires_at`` (its TTL) and
drops every key of an older revocation epoch as soon as a release with a newer one arrives;
a release older than keys already held is never used.  Releases of one pair are
single-flighted.  With ``cache=False`` (the per-request baseline) nothing is kept and every
request makes a fresh key pair, attests and releases.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.attest import Evidence, Policy, TrustAnchors
from sealserve.crypto import HpkeKeyPair
from sealserve.errors import AccessDenied, DeadlineExceeded, KeyServiceError
from sealserve.protocol import (
    AttestedKeyService,
    Release,
    ReleasedKeys,
    ReleaseSession,
    attestation_nonce,
    parse_challenge,
    verify_keyservice,
    wire,
)

__all__ = ["KeyBroker", "KeyCache", "KeyCacheStats", "KeyResult", "Relay"]

_log = get_logger(__name__)
#: How many times a release is retried when it comes back stale or the KeyService restarted.
_MAX_ATTEMPTS = 3


class Relay(Protocol):
    """Carries one HTTP exchange with the KeyService (the host does it; it is untrusted)."""

    def __call__(
        self, method: str, path: str, body: bytes, *, timeout: float | None
    ) -> tuple[int, bytes]: ...


EvidenceFn = Callable[[bytes], Evidence]


@dataclasses.dataclass(frozen=True, slots=True)
class _Held:
    keys: ReleasedKeys
    epoch: int
    expires_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class KeyCacheStats:
    entries: int
    epoch: int
    hits: int
    misses: int
    releases: int
    expired: int
    dropped_by_epoch: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class KeyCache:
    """Released keys by (user_id, model_id), honouring TTL and revocation epoch."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}
        self._epoch = -1
        self._hits = self._misses = self._releases = self._expired = self._dropped = 0

    @property
    def epoch(self) -> int:
        """The newest revocation epoch seen (-1 before any release)."""
        with self._lock:
            return self._epoch

    def get(self, user_id: str, model_id: str) -> ReleasedKeys | None:
        """The keys of the pair if held, unexpired and of the newest epoch; else ``None``."""
        pair = (user_id, model_id)
        with self._lock:
            held = self._held.get(pair)
            if held is not None and self._clock.time() >= held.expires_at:
                del self._held[pair]
                self._expired += 1
                held = None
            if held is None:
                self._misses += 1
                return None
            self._hits += 1
            return held.keys

    def holds(self, user_id: str, model_id: str) -> bool:
        """Whether :meth:`get` would find the pair's keys now (not counted as a lookup)."""
        with self._lock:
            held = self._held.get((user_id, model_id))
            return held is not None and self._clock.time() < held.expires_at

    def put(self, release: Release) -> bool:
        """Keep the keys of ``release``; ``False`` (nothing kept) when the runtime already
        holds keys of a newer revocation epoch, so the release must be made again."""
        with self._lock:
            epoch = release.revocation_epoch
            if epoch < self._epoch:
                return False
            if epoch > self._epoch:
                stale = [pair for pair, held in self._held.items() if held.epoch < epoch]
                for pair in stale:
                    del self._held[pair]
                self._dropped += len(stale)
                if stale:
                    _log.event("keys.dropped_by_epoch", count=len(stale), epoch=epoch)
                self._epoch = epoch
            for pair, keys in release.keys.items():
                self._held[pair] = _Held(keys, epoch, release.expires_at)
            self._releases += 1
            return True

    def drop(self, user_id: str, model_id: str) -> None:
        with self._lock:
            self._held.pop((user_id, model_id), None)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()

    def stats(self) -> KeyCacheStats:
        with self._lock:
            return KeyCacheStats(
                entries=len(self._held),
                epoch=self._epoch,
                hits=self._hits,
                misses=self._misses,
                releases=self._releases,
                expired=self._expired,
                dropped_by_epoch=self._dropped,
            )


@dataclasses.dataclass(frozen=True, slots=True)
class KeyResult:
    keys: ReleasedKeys
    #: Seconds this request spent obtaining them (0 on a cache hit).
    seconds: float
    #: Whether this request made the release (else it hit the cache or joined one).
    released: bool


class KeyBroker:
    """Obtains and caches released keys (see the module docstring).

    ``pin`` is the (policy, trust anchors) the KeyService's evidence must satisfy; it comes
    from the measured launch config.  ``evidence(report_data)`` asks the TEE for evidence
    (``local_evidence`` in a launched runtime).
    """

    def __init__(
        self,
        *,
        relay: Relay,
        pin: tuple[Policy, TrustAnchors],
        evidence: EvidenceFn,
        cache: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        key_pair: HpkeKeyPair | None = None,
    ) -> None:
        policy, trust = pin
        if not isinstance(policy, Policy) or not isinstance(trust, TrustAnchors):
            raise TypeError("pin must be a (Policy, TrustAnchors) pair")
        self._relay = relay
        self._policy = policy
        self._trust = trust
        self._evidence = evidence
        self._caching = cache
        self._clock = clock
        self._key_pair = key_pair or HpkeKeyPair.generate()
        self._cache = KeyCache(clock=clock)
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, str], concurrent.futures.Future[ReleasedKeys]] = {}
        self._session: ReleaseSession | None = None

    @property
    def public_key(self) -> bytes:
        """The runtime's HPKE public key (fresh per process start)."""
        return self._key_pair.public_key_bytes()

    @property
    def cache(self) -> KeyCache:
        return self._cache

    def keys_for(self, user_id: str, model_id: str, *, deadline: float | None) -> KeyResult:
        """The keys of (user, model): cached, joined, or released now.

        :class:`~sealserve.errors.AccessDenied` when the KeyService refuses (no grant, no
        request key, a policy the runtime does not satisfy).  ``deadline`` is monotonic.
        """
        started = time.perf_counter()
        if not self._caching:
            keys = self._release_fresh(user_id, model_id, deadline)
            return KeyResult(keys, time.perf_counter() - started, True)
        held = self._cache.get(user_id, model_id)
        if held is not None:
            return KeyResult(held, 0.0, False)
        pair = (user_id, model_id)
        with self._lock:
            flight = self._flights.get(pair)
            leader = flight is None
            if flight is None:
                held = self._cache.get(user_id, model_id)  # a release may just have landed
                if held is not None:
                    return KeyResult(held, 0.0, False)
                flight = concurrent.futures.Future()
                self._flights[pair] = flight
        if not leader:
            try:
                keys = flight.result(self._remaining(deadline))
            except concurrent.futures.TimeoutError:
                raise DeadlineExceeded(
                    "the key release was still under way at the deadline"
                ) from None
            return KeyResult(keys, time.perf_counter() - started, False)
        try:
            keys = self._release_cached(user_id, model_id, deadline)
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._flights.pop(pair, None)
        flight.set_result(keys)
        return KeyResult(keys, time.perf_counter() - started, True)

    # -- releases ------------------------------------------------------------------------------

    def _release_cached(self, user_id: str, model_id: str, deadline: float | None) -> ReleasedKeys:
        for _ in range(_MAX_ATTEMPTS):
            session = self._session_or_attest(deadline)
            release = self._release(session, self._key_pair, user_id, model_id, deadline)
            if self._cache.put(release):
                return release.keys[(user_id, model_id)]
            _log.event("keys.stale_release", epoch=release.revocation_epoch)
        raise KeyServiceError("the KeyService kept answering with releases of an older epoch")

    def _release_fresh(self, user_id: str, model_id: str, deadline: float | None) -> ReleasedKeys:
        """The baseline: a new key pair, a new attestation of the KeyService, a release."""
        key_pair = HpkeKeyPair.generate()
        session = self._attest(key_pair, deadline)
        release = self._release(session, key_pair, user_id, model_id, deadline)
        return release.keys[(user_id, model_id)]

    def _session_or_attest(self, deadline: float | None) -> ReleaseSession:
        with self._lock:
            session = self._session
        if session is None:
            session = self._attest(self._key_pair, deadline)
            with self._lock:
                self._session = session
        return session

    def _attest(self, key_pair: HpkeKeyPair, deadline: float | None) -> ReleaseSession:
        nonce = attestation_nonce()
        path = f"{wire.API_PREFIX}/attestation?nonce={wire.b64encode(nonce)}"
        status, body = self._relay("GET", path, b"", timeout=self._remaining(deadline))
        if status != 200:
            raise _http_error("its attestation", status)
        attested: AttestedKeyService = verify_keyservice(
            body, nonce=nonce, policy=self._policy, trust=self._trust, now=self._clock.time()
        )
        _log.event("keys.keyservice_attested", keyservice_id=attested.keyservice_id)
        return ReleaseSession(keyservice=attested, key_pair=key_pair, clock=self._clock)

    def _release(
        self,
        session: ReleaseSession,
        key_pair: HpkeKeyPair,
        user_id: str,
        model_id: str,
        deadline: float | None,
    ) -> Release:
        try:
            return self._release_once(session, user_id, model_id, deadline)
        except AccessDenied:
            raise
        except KeyServiceError as exc:
            if exc.retryable:  # unreachable or limiting: attesting again would not help
                raise
            # The KeyService may have restarted (new keys, new id): attest it again, once.
            _log.event("keys.reattest", level=logging.INFO, error=str(exc))
            fresh = self._attest(key_pair, deadline)
            if session is self._session:
                with self._lock:
                    self._session = fresh
            return self._release_once(fresh, user_id, model_id, deadline)

    def _release_once(
        self, session: ReleaseSession, user_id: str, model_id: str, deadline: float | None
    ) -> Release:
        status, body = self._relay(
            "POST", f"{wire.API_PREFIX}/challenges", b"", timeout=self._remaining(deadline)
        )
        if status == 403:
            raise AccessDenied()
        if status != 201:
            raise _http_error("the challenge", status)
        nonce = parse_challenge(body)
        evidence = self._evidence(session.report_data(nonce))
        request = session.request_body(nonce=nonce, evidence=evidence, pairs=[(user_id, model_id)])
        status, answer = self._relay(
            "POST", f"{wire.API_PREFIX}/releases", request, timeout=self._remaining(deadline)
        )
        if status not in (200, 403):
            raise _http_error("the release", status)
        release = session.open(answer, nonce=nonce, status=status)
        if (user_id, model_id) not in release.keys:
            raise KeyServiceError("the release does not hold the keys that were asked for")
        _log.event(
            "keys.released",
            model_id=model_id,
            epoch=release.revocation_epoch,
            ttl_s=round(release.expires_at - release.issued_at, 3),
        )
        return release

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed while obtaining keys")
        return remaining


_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


def _http_error(what: str, status: int) -> KeyServiceError:
    error = KeyServiceError(f"the KeyService answered {what} with HTTP {status}")
    if status in _RETRYABLE_HTTP:
        error.retryable = True
    return error
