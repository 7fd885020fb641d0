"""Keys inside the runtime: released by the attested KeyService, cached as it allows.

:class:`KeyBroker` obtains the keys of a (user, model) pair the way docs/keyservice.md
prescribes, through the host's relay (which sees only ciphertext and public data):

1. attest the KeyService once (``GET /v1/attestation`` with a fresh nonce, checked against
   the policy and trust anchors pinned in the runtime's *measured* launch config);
2. ask for a challenge, obtain evidence that binds the runtime's HPKE public key to its
   nonce, and send the release request;
3. open the release: it must be signed by the attested KeyService for this key pair and
   nonce, or it is refused.

:class:`KeyCache` keeps released keys until the KeyService's ``expires_at`` (its TTL), and
uses them only while a **revocation poll** confirmed them within the KeyService's
``revocation_check_s`` (5 s by default, measured into the KeyService): ``POST
/v1/revocations``, sealed under the session key every release carries, answers what access
changed since the epoch the runtime holds keys of, and the runtime drops exactly the keys those
changes touch (a revoked grant, a withdrawn or replaced request key, a rotated model key).  A
hit older than half the bound starts a poll in the background; a hit older than the bound
waits for one (and, if the poll fails, releases again): so a revocation takes effect within the
bound, not the TTL, even when the host withholds polls.  A release older than the epoch already
confirmed is never used.  Releases of one pair are single-flighted, and a pair the KeyService
refused is refused again for a few seconds without asking (so garbage requests through the
gateway cannot make a full attested release each).  With ``cache=False`` (the per-request
baseline) nothing is kept and every request makes a fresh key pair, attests and releases.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.attest import Evidence, Policy, TrustAnchors
from sealserve.crypto import HpkeKeyPair, SymmetricKey
from sealserve.errors import AccessDenied, DeadlineExceeded, KeyServiceError
from sealserve.protocol import (
    AttestedKeyService,
    Release,
    ReleasedKeys,
    ReleaseSession,
    RevocationAnswer,
    RevocationPoll,
    attestation_nonce,
    parse_challenge,
    verify_keyservice,
    wire,
)

__all__ = [
    "DENIED_PAIR_TTL_S",
    "KeyBroker",
    "KeyCache",
    "KeyCacheStats",
    "KeyResult",
    "Relay",
]

_log = get_logger(__name__)
#: How many times a release is retried when it comes back stale or the KeyService restarted.
_MAX_ATTEMPTS = 3
#: The revocation check bound before any release said the KeyService's (its default).
_DEFAULT_CHECK_S = 5.0


class Relay(Protocol):
    """Carries one HTTP exchange with the KeyService (the host does it; it is untrusted)."""

    def __call__(
        self, method: str, path: str, body: bytes, *, timeout: float | None
    ) -> tuple[int, bytes]: ...


EvidenceFn = Callable[[bytes], Evidence]


#: How long a pair the KeyService refused is refused again without asking (seconds): a grant
#: made meanwhile is usable after at most this long.  Bounded in code (not a host argument).
DENIED_PAIR_TTL_S = 5.0
_MAX_DENIED = 4096


@dataclasses.dataclass(slots=True)
class _Held:
    keys: ReleasedKeys
    epoch: int
    expires_at: float
    #: When (monotonic) a release or a poll last said these keys are still good.
    confirmed_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class KeyCacheStats:
    entries: int
    epoch: int
    hits: int
    misses: int
    releases: int
    expired: int
    dropped_by_epoch: int
    polls: int
    denied_hits: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class PollTicket:
    """What a revocation poll needs: the session key, this runtime's key id and the epoch to
    ask from."""

    session_key: SymmetricKey
    since: int


class KeyCache:
    """Released keys by (user_id, model_id), honouring TTL, revocation polls and denials."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}
        self._denied: OrderedDict[tuple[str, str], float] = OrderedDict()
        # Every held key is good as of this epoch (-1: no poll answered yet).
        self._epoch = -1
        self._check_s = _DEFAULT_CHECK_S
        self._session: SymmetricKey | None = None
        self._hits = self._misses = self._releases = self._expired = self._dropped = 0
        self._polls = self._denied_hits = 0

    @property
    def epoch(self) -> int:
        """The newest revocation epoch confirmed (-1 before any)."""
        with self._lock:
            return self._epoch

    @property
    def check_s(self) -> float:
        """How long keys are used without a poll confirming them (the KeyService's bound)."""
        with self._lock:
            return self._check_s

    def lookup(self, user_id: str, model_id: str) -> tuple[ReleasedKeys, float] | None:
        """The pair's keys and their age since last confirmed (seconds), if held and within
        the TTL; ``None`` otherwise (counted as a miss).  The caller decides what the age
        allows (:attr:`check_s`)."""
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
            return held.keys, self._clock.monotonic() - held.confirmed_at

    def get(self, user_id: str, model_id: str) -> ReleasedKeys | None:
        """The pair's keys if held, within the TTL and confirmed within :attr:`check_s`."""
        found = self.lookup(user_id, model_id)
        if found is None or found[1] >= self.check_s:
            return None
        return found[0]

    def holds(self, user_id: str, model_id: str) -> bool:
        """Whether :meth:`get` would find the pair's keys now (not counted as a lookup)."""
        with self._lock:
            held = self._held.get((user_id, model_id))
            return (
                held is not None
                and self._clock.time() < held.expires_at
                and self._clock.monotonic() - held.confirmed_at < self._check_s
            )

    def put(self, release: Release) -> bool:
        """Keep the keys of ``release``; ``False`` (nothing kept) when it is older than the
        epoch already confirmed (a replayed release), so it must be made again."""
        now = self._clock.monotonic()
        with self._lock:
            epoch = release.revocation_epoch
            if epoch < self._epoch:
                return False
            for pair, keys in release.keys.items():
                self._held[pair] = _Held(keys, epoch, release.expires_at, now)
                self._denied.pop(pair, None)
            self._session = release.session_key
            self._check_s = release.revocation_check_s
            self._releases += 1
            return True

    def poll_ticket(self) -> PollTicket | None:
        """What the next revocation poll needs, or ``None`` when no release came yet."""
        with self._lock:
            if self._session is None:
                return None
            since = self._epoch
            if since < 0:
                since = min((h.epoch for h in self._held.values()), default=0)
            return PollTicket(self._session, max(since, 0))

    def apply(self, answer: RevocationAnswer, *, sent_at: float) -> int:
        """Apply a poll's answer (the poll was sent at monotonic ``sent_at``): drop the keys
        each change touched (obtained under an older epoch than the change), or every key
        older than the answer's epoch when the answer is not complete; the rest is confirmed
        as of ``sent_at``.  Returns how many keys were dropped."""
        with self._lock:
            self._polls += 1
            dropped = []
            for pair, held in self._held.items():
                if held.epoch > answer.epoch:
                    continue  # released after the poll was answered: confirmed by its release
                user_id, model_id = pair
                touched = (not answer.complete and held.epoch < answer.epoch) or any(
                    model == model_id and user in (None, user_id) and held.epoch < at
                    for at, model, user in answer.changes
                )
                if touched:
                    dropped.append(pair)
                else:
                    held.confirmed_at = max(held.confirmed_at, sent_at)
            for pair in dropped:
                del self._held[pair]
            self._dropped += len(dropped)
            self._epoch = max(self._epoch, answer.epoch)
        if dropped:
            _log.event("keys.revoked", count=len(dropped), epoch=answer.epoch)
        return len(dropped)

    def denied(self, user_id: str, model_id: str) -> bool:
        """Whether the KeyService refused this pair less than :data:`DENIED_PAIR_TTL_S` ago."""
        pair = (user_id, model_id)
        with self._lock:
            until = self._denied.get(pair)
            if until is None:
                return False
            if self._clock.monotonic() >= until:
                del self._denied[pair]
                return False
            self._denied_hits += 1
            return True

    def deny(self, user_id: str, model_id: str) -> None:
        """Remember that the KeyService refused this pair (bounded: oldest forgotten first)."""
        with self._lock:
            self._denied.pop((user_id, model_id), None)
            self._denied[(user_id, model_id)] = self._clock.monotonic() + DENIED_PAIR_TTL_S
            while len(self._denied) > _MAX_DENIED:
                self._denied.popitem(last=False)

    def drop(self, user_id: str, model_id: str) -> None:
        with self._lock:
            self._held.pop((user_id, model_id), None)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._denied.clear()

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
                polls=self._polls,
                denied_hits=self._denied_hits,
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
        self._key_id = wire.fingerprint(self._key_pair.public_key_bytes())
        # One revocation poll at a time; a background one runs on this executor.
        self._poll: concurrent.futures.Future[None] | None = None
        self._poller = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="keys-poll"
        )

    @property
    def public_key(self) -> bytes:
        """The runtime's HPKE public key (fresh per process start)."""
        return self._key_pair.public_key_bytes()

    @property
    def cache(self) -> KeyCache:
        return self._cache

    def prepare(self, *, deadline: float | None) -> float:
        """Attest the KeyService now, so the first release needs only a challenge; the
        seconds it took (0 when already done, or in baseline mode where every release attests
        afresh).  Raises what an attestation raises (a KeyService that fails its attestation
        is an :class:`~sealserve.errors.AttestationError`)."""
        if not self._caching:
            return 0.0
        with self._lock:
            if self._session is not None:
                return 0.0
        started = time.perf_counter()
        self._session_or_attest(deadline)
        return time.perf_counter() - started

    def keys_for(self, user_id: str, model_id: str, *, deadline: float | None) -> KeyResult:
        """The keys of (user, model): cached, joined, or released now.

        :class:`~sealserve.errors.AccessDenied` when the KeyService refuses (no grant, no
        request key, a policy the runtime does not satisfy).  ``deadline`` is monotonic.
        """
        started = time.perf_counter()
        if not self._caching:
            keys = self._release_fresh(user_id, model_id, deadline)
            return KeyResult(keys, time.perf_counter() - started, True)
        found = self._cache.lookup(user_id, model_id)
        if found is not None:
            keys, age = found
            check_s = self._cache.check_s
            if age < check_s:
                if age >= check_s / 2:
                    self._poll_soon()
                return KeyResult(keys, 0.0, False)
            # Not confirmed within the bound: a poll first (a revocation may have touched them).
            self._poll_now(deadline)
            held = self._cache.get(user_id, model_id)
            if held is not None:
                return KeyResult(held, time.perf_counter() - started, False)
        if self._cache.denied(user_id, model_id):
            raise AccessDenied()
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
            if isinstance(exc, AccessDenied):
                self._cache.deny(user_id, model_id)
            flight.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._flights.pop(pair, None)
        flight.set_result(keys)
        return KeyResult(keys, time.perf_counter() - started, True)

    def close(self) -> None:
        """Stop the background poller (waits for a poll under way)."""
        self._poller.shutdown(wait=True, cancel_futures=True)

    # -- revocation polls -------------------------------------------------------------------

    def _poll_soon(self) -> None:
        """Start a poll in the background unless one is under way."""
        with self._lock:
            if self._poll is not None and not self._poll.done():
                return
            try:
                self._poll = self._poller.submit(self._poll_once, None)
            except RuntimeError:  # shut down: the runtime is closing
                self._poll = None

    def _poll_now(self, deadline: float | None) -> None:
        """Poll and wait for it (joining one under way); a failed poll leaves the keys
        unconfirmed (the caller then releases again)."""
        with self._lock:
            flight = self._poll
            if flight is None or flight.done():
                flight = concurrent.futures.Future()
                self._poll = flight
                leader = True
            else:
                leader = False
        if leader:
            try:
                self._poll_once(deadline)
            except BaseException as exc:
                flight.set_exception(exc)
                raise
            flight.set_result(None)
            return
        with contextlib.suppress(Exception):  # a timeout or a failed poll: keys stay stale
            flight.result(self._remaining(deadline))

    def _poll_once(self, deadline: float | None) -> None:
        ticket = self._cache.poll_ticket()
        if ticket is None:
            return
        poll = RevocationPoll(
            session_key=ticket.session_key,
            runtime_key_id=self._key_id,
            since=ticket.since,
            clock=self._clock,
        )
        sent_at = self._clock.monotonic()
        try:
            status, body = self._relay(
                "POST",
                f"{wire.API_PREFIX}/revocations",
                poll.body(),
                timeout=self._remaining(deadline),
            )
            answer = poll.open(status, body)
        except (KeyServiceError, OSError, DeadlineExceeded) as exc:
            # Fail closed: keys that are not confirmed within the bound are not used.
            _log.event("keys.poll_failed", level=logging.INFO, error=type(exc).__name__)
            return
        self._cache.apply(answer, sent_at=sent_at)

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
