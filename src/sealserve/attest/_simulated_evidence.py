"""Simulated evidence: a body signed with the simulated platform's Ed25519 key.

``raw`` is the canonical encoding of ``{"body": body, "signature": sig}``; ``body`` is the
canonical encoding of::

    {"label": "sealserve/sim-evidence", "version": 1, "measurement": <32 bytes>,
     "report_data": <64 bytes>, "debug": 0|1, "tcb_status": "UpToDate", "entry": "runtime",
     "issued_at": <Unix seconds>, "platform": <hex SHA-256 of the platform public key>}

and ``sig`` is the platform key's Ed25519 signature of ``body``.  Only the platform (which
holds the key) calls :func:`sign_simulated`; verifiers call :func:`verify_simulated` with the
platform public keys they pin.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection
from typing import Final

from sealserve.attest._evidence import FORMAT_SIMULATED, REPORT_DATA_BYTES, Evidence
from sealserve.crypto import Identity, canonical_decode, canonical_encode, verify_signature
from sealserve.errors import AttestationError, InvalidSignature

__all__ = [
    "SimulatedClaims",
    "parse_simulated",
    "platform_key_id",
    "sign_simulated",
    "verify_simulated",
]

_LABEL: Final = "sealserve/sim-evidence"
_VERSION: Final = 1
_MEASUREMENT_BYTES: Final = 32
_BODY_KEYS: Final = frozenset(
    {
        "label",
        "version",
        "measurement",
        "report_data",
        "debug",
        "tcb_status",
        "entry",
        "issued_at",
        "platform",
    }
)


class _Malformed(ValueError):
    """Raw simulated evidence that does not parse; the reason is the message."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulatedClaims:
    """The fields of a simulated evidence body."""

    measurement: bytes
    report_data: bytes
    debug: bool
    tcb_status: str
    entry: str
    issued_at: int
    platform: str


def platform_key_id(public_key: bytes) -> str:
    """How evidence names the platform key that signed it: hex SHA-256 of the raw key."""
    return hashlib.sha256(public_key).hexdigest()


def sign_simulated(
    platform: Identity,
    *,
    measurement: bytes,
    report_data: bytes,
    debug: bool,
    tcb_status: str,
    entry: str,
    issued_at: int,
) -> Evidence:
    """Evidence for a launched process, signed by the platform key (the platform only)."""
    if len(measurement) != _MEASUREMENT_BYTES:
        raise ValueError(f"measurement must be {_MEASUREMENT_BYTES} bytes, got {len(measurement)}")
    if len(report_data) != REPORT_DATA_BYTES:
        raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(report_data)}")
    body = canonical_encode(
        {
            "label": _LABEL,
            "version": _VERSION,
            "measurement": measurement,
            "report_data": report_data,
            "debug": int(debug),
            "tcb_status": tcb_status,
            "entry": entry,
            "issued_at": int(issued_at),
            "platform": platform_key_id(platform.public_key_bytes),
        }
    )
    raw = canonical_encode({"body": body, "signature": platform.sign(body)})
    return parse_simulated(raw)


def parse_simulated(raw: bytes) -> Evidence:
    """The unverified :class:`Evidence` of simulated ``raw``; the fixed error if malformed."""
    try:
        _, claims = _split(raw)
    except _Malformed:
        raise AttestationError() from None
    return Evidence(
        format=FORMAT_SIMULATED,
        measurement=claims.measurement,
        report_data=claims.report_data,
        raw=bytes(raw),
        debug=claims.debug,
        tcb_status=claims.tcb_status,
    )


def verify_simulated(raw: bytes, trusted_keys: Collection[bytes]) -> SimulatedClaims:
    """The claims of ``raw`` if one of ``trusted_keys`` signed it.

    Raises ``ValueError`` naming the reason (the caller logs it and raises the fixed error).
    """
    body, claims = _split(raw)
    key = next((k for k in trusted_keys if platform_key_id(k) == claims.platform), None)
    if key is None:
        raise _Malformed("untrusted_platform")
    signature = canonical_decode(raw)["signature"]
    assert isinstance(signature, bytes)  # checked by _split
    try:
        verify_signature(key, body, signature)
    except InvalidSignature:
        raise _Malformed("signature") from None
    return claims


def _split(raw: bytes) -> tuple[bytes, SimulatedClaims]:
    try:
        outer = canonical_decode(raw)
        body = outer.get("body")
        signature = outer.get("signature")
        if set(outer) != {"body", "signature"} or not isinstance(body, bytes):
            raise _Malformed("fields")
        if not isinstance(signature, bytes):
            raise _Malformed("fields")
        fields = canonical_decode(body)
    except _Malformed:
        raise
    except ValueError as exc:
        raise _Malformed("encoding") from exc
    if set(fields) != _BODY_KEYS or fields["label"] != _LABEL or fields["version"] != _VERSION:
        raise _Malformed("fields")
    measurement, report_data = fields["measurement"], fields["report_data"]
    debug, tcb_status, entry = fields["debug"], fields["tcb_status"], fields["entry"]
    issued_at, platform = fields["issued_at"], fields["platform"]
    if not (
        isinstance(measurement, bytes)
        and len(measurement) == _MEASUREMENT_BYTES
        and isinstance(report_data, bytes)
        and len(report_data) == REPORT_DATA_BYTES
        and debug in (0, 1)
        and isinstance(tcb_status, str)
        and isinstance(entry, str)
        and isinstance(issued_at, int)
        and isinstance(platform, str)
    ):
        raise _Malformed("fields")
    claims = SimulatedClaims(
        measurement=measurement,
        report_data=report_data,
        debug=bool(debug),
        tcb_status=tcb_status,
        entry=entry,
        issued_at=issued_at,
        platform=platform,
    )
    return body, claims
