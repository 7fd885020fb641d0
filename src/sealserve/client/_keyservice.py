"""An attested, signed HTTP connection to the KeyService (what ``Owner`` and ``User`` use).

Opening the client fetches the KeyService's evidence with a fresh nonce and verifies it
against the pinned policy before anything else is sent.  The evidence proves which code runs;
the pin also names *which instance* of it: its long-term keys (``keyservice_id``, the hash of
its HPKE and signing public keys), configured or remembered on first use.  A KeyService that
attests but presents other long-term keys is refused with
:class:`~sealserve.errors.KeyServiceChanged`: its secrets are not the ones clients trusted
before (a host that re-created the KeyService, or launched it with secrets of its choosing).

Every later request is signed with the principal's identity, and every response must carry
a signature by the attested KeyService over that request, its status and its body: a proxy in
front of the service can neither read the keys (they are HPKE-wrapped to the attested key)
nor fake an answer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import ssl
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve._resource import Resource
from sealserve._tls import client_context
from sealserve.attest import Policy, TrustAnchors
from sealserve.crypto import Identity, sign_request, verify_signature
from sealserve.errors import (
    AccessDenied,
    AuditLogTampered,
    Conflict,
    InvalidSignature,
    KeyServiceChanged,
    KeyServiceError,
    NotFound,
    RateLimited,
)
from sealserve.protocol import (
    AttestedKeyService,
    ErrorOut,
    Message,
    attestation_nonce,
    default_keyservice_pin,
    verify_keyservice,
    wire,
)

__all__ = ["KeyServiceClient", "KeyServicePin", "known_keyservices_file"]

_log = get_logger(__name__)
_A = TypeVar("_A", bound=Message)


_KEYSERVICE_ID: Final = re.compile(r"[0-9a-f]{64}")
_KNOWN_VERSION: Final = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyServicePin:
    """What a client requires of the KeyService: a policy and the platform keys that may sign
    its evidence (which code), and which instance of that code (its long-term keys).

    ``keyservice_id`` pins the instance outright; else ``known_keyservices`` (a JSON file) pins
    it on first use: the first id seen for a URL is remembered there and every later one must
    match.  With neither, only the code is pinned.  :meth:`default` pins the ``keyservice``
    entry of the installed code on the simulated platform whose key is in ``data_dir``, and
    remembers instances in ``<data_dir>/client/known-keyservices.json``.
    """

    policy: Policy
    trust: TrustAnchors
    keyservice_id: str | None = None
    known_keyservices: Path | None = None

    def __post_init__(self) -> None:
        if self.keyservice_id is not None and not (
            isinstance(self.keyservice_id, str) and _KEYSERVICE_ID.fullmatch(self.keyservice_id)
        ):
            raise ValueError(
                f"keyservice_id must be 64 lowercase hex characters, got {self.keyservice_id!r}"
            )
        if self.known_keyservices is not None:
            object.__setattr__(self, "known_keyservices", Path(self.known_keyservices))

    @classmethod
    def default(cls, data_dir: str | Path) -> KeyServicePin:
        """The pin of the KeyService ``sealserve up`` runs on ``data_dir``: the installed
        code's KeyService entry on the simulated platform of ``data_dir``, and the record of
        the KeyService instances its clients have seen (trust on first use)."""
        policy, trust = default_keyservice_pin(Path(data_dir))
        return cls(policy=policy, trust=trust, known_keyservices=known_keyservices_file(data_dir))

    def check_instance(self, url: str, attested: AttestedKeyService) -> None:
        """Accept ``attested`` (reached at ``url``) as the pinned instance, remembering it on
        first use; :class:`~sealserve.errors.KeyServiceChanged` when it is another one."""
        seen = attested.keyservice_id
        if self.keyservice_id is not None:
            if seen != self.keyservice_id:
                raise KeyServiceChanged(
                    f"the KeyService at {url} attested, but its long-term keys are "
                    f"{seen[:16]}..., not the configured {self.keyservice_id[:16]}...: its "
                    "secrets are not the ones you pinned. Treat this as an attack (a host that "
                    "launched it with secrets of its own) unless its operator re-created it on "
                    "purpose and told you the new id."
                )
            return
        if self.known_keyservices is None:
            return
        known = _read_known(self.known_keyservices)
        first = known.get(url)
        if first is None:
            known[url] = {"keyservice_id": seen, "measurement": attested.measurement}
            _write_known(self.known_keyservices, known)
            return
        if first.get("keyservice_id") != seen:
            raise KeyServiceChanged(
                f"the KeyService at {url} attested, but its long-term keys changed: "
                f"{seen[:16]}... now, {str(first.get('keyservice_id'))[:16]}... when first "
                "seen. A KeyService keeps its keys across restarts and upgrades of its host; "
                "new keys mean new secrets, which is what a host that launched it with "
                "secrets of its own would show. Refusing to send it anything. If its operator "
                f"re-created it on purpose, remove its entry from '{self.known_keyservices}'."
            )


def known_keyservices_file(data_dir: str | Path) -> Path:
    """Where clients of ``data_dir`` remember KeyService instances on first use."""
    return Path(data_dir) / "client" / "known-keyservices.json"


def _read_known(path: Path) -> dict[str, dict[str, str]]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise KeyServiceError(f"cannot read the known KeyServices in '{path}': {exc}") from exc
    entries = doc.get("keyservices") if isinstance(doc, dict) else None
    if doc.get("version") != _KNOWN_VERSION or not isinstance(entries, dict):
        raise KeyServiceError(f"'{path}' is not a known-KeyServices file (version 1)")
    return {str(url): dict(entry) for url, entry in entries.items() if isinstance(entry, dict)}


def _write_known(path: Path, known: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    doc = {"version": _KNOWN_VERSION, "keyservices": known}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
    tmp.replace(path)


class KeyServiceClient(Resource):
    """An attested, signed connection to the KeyService (what :class:`Owner` and
    :class:`User` use): ``with KeyServiceClient(url, identity=..., pin=...) as ks: ...``.

    Opening it attests the KeyService (see the module docstring); every request is signed with
    ``identity`` and every answer must be signed by the attested KeyService.  An ``https://``
    URL's certificate must chain to ``ca_bundle`` (default: the system's roots).
    """

    resource_name = "the KeyService client"

    def __init__(
        self,
        url: str,
        *,
        identity: Identity,
        pin: KeyServicePin,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        if not isinstance(identity, Identity):
            raise TypeError(f"identity must be an Identity, got {type(identity).__name__}")
        if not isinstance(pin, KeyServicePin):
            raise TypeError(f"pin must be a KeyServicePin, got {type(pin).__name__}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.url = url.rstrip("/")
        self.identity = identity
        self._pin = pin
        self._clock = clock
        self._timeout = timeout_s
        self._transport = transport
        self._verify: ssl.SSLContext | bool = (
            client_context(ca_bundle) if url.startswith("https://") else True
        )
        super().__init__()
        self._http: httpx.Client | None = None
        self._attested: AttestedKeyService | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def keyservice(self) -> AttestedKeyService:
        """The attested KeyService (after :meth:`open`)."""
        self._require_open()
        assert self._attested is not None
        return self._attested

    def _open(self) -> None:
        self._http = httpx.Client(
            base_url=self.url, timeout=self._timeout, transport=self._transport, verify=self._verify
        )
        self._attested = self._attest()
        _log.event(
            "keyservice_client.attested",
            url=self.url,
            keyservice_id=self._attested.keyservice_id,
            measurement=self._attested.measurement,
        )

    def _close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _require_open(self) -> httpx.Client:
        self._check_opened()
        assert self._http is not None
        return self._http

    def _attest(self) -> AttestedKeyService:
        assert self._http is not None
        nonce = attestation_nonce()
        response = self._send("GET", f"{wire.API_PREFIX}/attestation?nonce={wire.b64encode(nonce)}")
        if response.status_code != 200:
            raise KeyServiceError(
                f"the KeyService at {self.url} refused its attestation "
                f"(HTTP {response.status_code})"
            )
        attested = verify_keyservice(
            response.content,
            nonce=nonce,
            policy=self._pin.policy,
            trust=self._pin.trust,
            now=self._clock.time(),
        )
        self._pin.check_instance(self.url, attested)
        return attested

    # -- requests -------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Message | None = None, *, answer: type[_A]
    ) -> _A:
        """Send a signed request and return its verified answer, parsed as ``answer``.

        Raises :class:`AccessDenied` (403), :class:`NotFound` (404), :class:`Conflict` (409),
        :class:`RateLimited` (429), :class:`ValueError` (400: the request was malformed) or
        :class:`KeyServiceError` (anything else, including an unverifiable response).
        """
        self._require_open()
        content = b"" if body is None else body.to_json()
        headers = sign_request(
            self.identity, method=method, path=path, body=content, clock=self._clock
        )
        if body is not None:
            headers["content-type"] = "application/json"
        response = self._send(method, path, content=content, headers=headers)
        self._check_signature(method, path, headers, response)
        _raise_for_status(response)
        try:
            return answer.from_json(response.content)
        except ValueError as exc:
            raise KeyServiceError(
                f"the KeyService's answer to {method} {path} is not a {answer.__name__}: {exc}"
            ) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self._http is not None
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise KeyServiceError(
                f"cannot reach the KeyService at {self.url}: {type(exc).__name__}: {exc}"
            ) from exc

    def _check_signature(
        self, method: str, path: str, headers: dict[str, str], response: httpx.Response
    ) -> None:
        assert self._attested is not None
        encoded = response.headers.get(wire.RESPONSE_SIGNATURE_HEADER, "")
        payload = wire.response_signing_payload(
            method=method,
            path=path,
            request_tag=wire.request_tag(headers),
            status=response.status_code,
            body=response.content,
        )
        try:
            signature = wire.b64decode(encoded, name=wire.RESPONSE_SIGNATURE_HEADER)
            verify_signature(self._attested.signing_public_key, payload, signature)
        except (ValueError, InvalidSignature):
            raise KeyServiceError(
                f"the answer to {method} {path} (HTTP {response.status_code}) is not signed by "
                "the attested KeyService; something between you and it answered instead"
            ) from None

    def __repr__(self) -> str:
        return f"KeyServiceClient({self.url!r}, state={self.state.value})"


#: How the KeyService's (signed) answer begins when its audit log does not verify.
_TAMPERED = "the audit log was tampered with"


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    try:
        message = ErrorOut.from_json(response.content).error
    except ValueError:
        message = f"HTTP {status}"
    if status == 403:
        raise AccessDenied()
    if status == 404:
        raise NotFound(message)
    if status == 409:
        raise Conflict(message)
    if status == 429:
        retry = response.headers.get("retry-after", "1")
        raise RateLimited(f"{message} (Retry-After: {retry} s)")
    if status == 400:
        raise ValueError(f"the KeyService refused the request: {message}")
    if status == 500 and message.startswith(_TAMPERED):  # a signed answer: it says so itself
        raise AuditLogTampered(message)
    raise KeyServiceError(f"the KeyService answered HTTP {status}: {message}")
