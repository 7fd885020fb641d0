"""Signed requests: an Ed25519 signature over a canonical form, with a replay window.

The signed message is the canonical encoding of::

    {"label": "sealserve/request", "principal": <principal id>, "method": "POST",
     "path": "/v1/keys/release?x=1", "body_sha256": <32 bytes>, "timestamp": <int seconds>,
     "nonce": <32 hex digits>}

and travels in four headers (:data:`SIGNATURE_HEADERS`).  A :class:`RequestVerifier` accepts a
request whose timestamp is within ``replay_window_s`` of its clock and whose (principal, nonce)
it has not seen within that window.

Checking and remembering are two steps (:meth:`RequestVerifier.check`, then
:meth:`RequestVerifier.remember`; :meth:`RequestVerifier.verify` does both), so a service can
rate-limit a verified principal *before* its nonce takes any memory: a request refused by a
limit is not remembered.  The memory is bounded per principal, never globally: a principal
with ``max_per_principal`` live nonces has its own new requests refused (with
:class:`~sealserve.errors.ReplayQuotaExceeded`) until some expire, and no principal's traffic
can make another's requests fail.  A service that records nonces elsewhere (the KeyService's
database) uses :meth:`RequestVerifier.check` alone.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import heapq
import logging
import os
import threading
from collections.abc import Mapping
from typing import Final, NoReturn

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.crypto._buffers import Buffer
from sealserve.crypto._canonical import canonical_encode
from sealserve.crypto._identity import Identity, principal_id, verify_signature
from sealserve.errors import InvalidSignature, ReplayQuotaExceeded

__all__ = [
    "NONCE_HEADER",
    "PRINCIPAL_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_HEADERS",
    "TIMESTAMP_HEADER",
    "RequestVerifier",
    "SignedRequest",
    "sign_request",
    "signed_principal",
]

PRINCIPAL_HEADER: Final = "x-sealserve-principal"
TIMESTAMP_HEADER: Final = "x-sealserve-timestamp"
NONCE_HEADER: Final = "x-sealserve-nonce"
SIGNATURE_HEADER: Final = "x-sealserve-signature"
#: The headers :func:`sign_request` returns, in lower case.
SIGNATURE_HEADERS: Final = (PRINCIPAL_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)

_NONCE_BYTES: Final = 16
_MAX_PATH: Final = 8192
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_log = get_logger(__name__)


def sign_request(
    identity: Identity,
    *,
    method: str,
    path: str,
    body: Buffer,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, str]:
    """The headers that sign this request as ``identity`` (add them to the HTTP request).

    ``path`` is the request target as sent, with its query string.
    """
    return _signed_headers(
        identity, method, path, body, int(clock.time()), os.urandom(_NONCE_BYTES).hex()
    )


def _signed_headers(
    identity: Identity, method: str, path: str, body: Buffer, timestamp: int, nonce: str
) -> dict[str, str]:
    """:func:`sign_request` with its timestamp and nonce given (``_fixed_nonce`` calls it for
    the test vectors; nothing else may pass a nonce)."""
    if not isinstance(identity, Identity):
        raise TypeError(f"identity must be an Identity, got {type(identity).__name__}")
    verb = _check_method(method)
    _check_path(path)
    message = _message(identity.principal_id, verb, path, bytes(body), timestamp, nonce)
    signature = base64.urlsafe_b64encode(identity.sign(message)).decode("ascii")
    return {
        PRINCIPAL_HEADER: identity.principal_id,
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature,
    }


def signed_principal(headers: Mapping[str, str]) -> str:
    """The principal id a signed request claims (to look up its public key before
    :meth:`RequestVerifier.verify`); ``InvalidSignature`` if absent or malformed."""
    value = _lower(headers).get(PRINCIPAL_HEADER, "")
    if len(value) != 64 or not _is_hex(value):
        _reject("principal")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request whose signature and timestamp verified (:meth:`RequestVerifier.check`)."""

    principal_id: str
    nonce: str
    timestamp: int
    #: Until when its nonce must be remembered (timestamp + replay window).
    expires_at: float


class RequestVerifier:
    """Verifies signed requests and refuses replays within the window; thread-safe."""

    def __init__(
        self,
        *,
        replay_window_s: float = 300.0,
        clock: Clock = SYSTEM_CLOCK,
        max_per_principal: int = 10_000,
    ) -> None:
        if not replay_window_s > 0:
            raise ValueError(f"replay_window_s must be > 0, got {replay_window_s!r}")
        if isinstance(max_per_principal, bool) or not isinstance(max_per_principal, int):
            raise TypeError(f"max_per_principal must be an int, got {max_per_principal!r}")
        if max_per_principal < 1:
            raise ValueError(f"max_per_principal must be >= 1, got {max_per_principal!r}")
        self._window = float(replay_window_s)
        self._clock = clock
        self._max = max_per_principal
        self._lock = threading.Lock()
        # Per principal: its live nonces and their expiry heap.
        self._seen: dict[str, tuple[dict[str, float], list[tuple[float, str]]]] = {}
        self._expiry: list[tuple[float, str]] = []  # (earliest expiry, principal)

    @property
    def replay_window_s(self) -> float:
        return self._window

    @property
    def remembered(self) -> int:
        """How many nonces are remembered now (expired ones are dropped on each remember)."""
        with self._lock:
            return sum(len(nonces) for nonces, _ in self._seen.values())

    def verify(
        self,
        public_key: Buffer,
        *,
        method: str,
        path: str,
        body: Buffer,
        headers: Mapping[str, str],
    ) -> SignedRequest:
        """:meth:`check` then :meth:`remember`: accept the request once, or raise
        :class:`~sealserve.errors.InvalidSignature` (or
        :class:`~sealserve.errors.ReplayQuotaExceeded`)."""
        signed = self.check(public_key, method=method, path=path, body=body, headers=headers)
        self.remember(signed)
        return signed

    def check(
        self,
        public_key: Buffer,
        *,
        method: str,
        path: str,
        body: Buffer,
        headers: Mapping[str, str],
    ) -> SignedRequest:
        """Verify the signature and the timestamp, remembering nothing; or raise
        :class:`~sealserve.errors.InvalidSignature`.

        ``public_key`` is the raw Ed25519 key of the principal the request claims (see
        :func:`signed_principal`); ``headers`` may use any letter case.
        """
        verb = _check_method(method)
        _check_path(path)
        fields = _lower(headers)
        pid = principal_id(public_key)
        if fields.get(PRINCIPAL_HEADER) != pid:
            _reject("principal")
        timestamp = _parse_int(fields.get(TIMESTAMP_HEADER, ""))
        nonce = fields.get(NONCE_HEADER, "")
        if len(nonce) != 2 * _NONCE_BYTES or not _is_hex(nonce):
            _reject("nonce")
        try:
            signature = base64.urlsafe_b64decode(fields.get(SIGNATURE_HEADER, "").encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            _reject("signature_encoding")
        now = self._clock.time()
        if abs(now - timestamp) > self._window:
            _reject("timestamp", skew_s=int(now - timestamp))
        message = _message(pid, verb, path, bytes(body), timestamp, nonce)
        verify_signature(public_key, message, signature)  # raises InvalidSignature
        return SignedRequest(pid, nonce, timestamp, timestamp + self._window)

    def remember(self, signed: SignedRequest) -> None:
        """Remember a checked request's nonce until it expires: :class:`InvalidSignature` if
        it was seen already (a replay), :class:`ReplayQuotaExceeded` if its principal already
        has ``max_per_principal`` live nonces (nothing is remembered then)."""
        now = self._clock.time()
        pid = signed.principal_id
        with self._lock:
            self._expire(now)
            nonces, heap = self._seen.setdefault(pid, ({}, []))
            if signed.nonce in nonces:
                _reject("replay")
            if len(nonces) >= self._max:
                _log.event(
                    "signature.replay_quota_full",
                    level=logging.DEBUG,
                    principal=pid,
                    size=self._max,
                )
                raise ReplayQuotaExceeded(
                    f"principal {pid} has {self._max} requests in the replay window; "
                    "retry when older ones expire"
                )
            nonces[signed.nonce] = signed.expires_at
            if not heap or signed.expires_at < heap[0][0]:
                heapq.heappush(self._expiry, (signed.expires_at, pid))
            heapq.heappush(heap, (signed.expires_at, signed.nonce))

    def _expire(self, now: float) -> None:
        """Drop the principals whose earliest nonce expired (and their expired nonces)."""
        while self._expiry and self._expiry[0][0] < now:
            _, pid = heapq.heappop(self._expiry)
            entry = self._seen.get(pid)
            if entry is None:
                continue
            nonces, heap = entry
            while heap and heap[0][0] < now:
                _, old = heapq.heappop(heap)
                nonces.pop(old, None)
            if heap:
                heapq.heappush(self._expiry, (heap[0][0], pid))
            else:
                del self._seen[pid]

    def __repr__(self) -> str:
        return f"RequestVerifier(replay_window_s={self._window!r}, max_per_principal={self._max!r})"


def _message(pid: str, method: str, path: str, body: bytes, timestamp: int, nonce: str) -> bytes:
    return canonical_encode(
        {
            "label": "sealserve/request",
            "principal": pid,
            "method": method,
            "path": path,
            "body_sha256": hashlib.sha256(body).digest(),
            "timestamp": timestamp,
            "nonce": nonce,
        }
    )


def _check_method(method: str) -> str:
    verb = method.upper() if isinstance(method, str) else ""
    if verb not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(_METHODS))}, got {method!r}")
    return verb


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path.startswith("/") or len(path) > _MAX_PATH:
        raise ValueError(
            f"path must start with '/' and be at most {_MAX_PATH} characters, got {path!r}"
        )


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping, got {type(headers).__name__}")
    return {str(k).lower(): v for k, v in headers.items() if str(k).lower() in SIGNATURE_HEADERS}


def _parse_int(text: str) -> int:
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 12):
        _reject("timestamp_format")
    return int(text)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _reject(reason: str, **detail: int) -> NoReturn:
    _log.event("signature.rejected", level=logging.DEBUG, reason=reason, **detail)
    raise InvalidSignature()
