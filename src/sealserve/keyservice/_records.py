"""The rows the store hands out and takes in: plain frozen values, no database types."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "AccessChange",
    "AccessChanges",
    "AuditEntry",
    "Claim",
    "ModelRow",
    "PairRecords",
    "PrincipalRow",
    "audit_values",
]


@dataclasses.dataclass(frozen=True, slots=True)
class PrincipalRow:
    principal_id: str
    public_key: bytes
    role: str


@dataclasses.dataclass(frozen=True, slots=True)
class ModelRow:
    model_id: str
    owner_id: str
    current_version: int


@dataclasses.dataclass(frozen=True, slots=True)
class PairRecords:
    """What the database holds for one (user, model) pair of a release; ``None`` when absent."""

    model_id: str
    user_id: str
    grant: bytes | None
    model_key_version: int | None
    model_key: bytes | None
    request_key_version: int | None
    request_key: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    event: str
    actor: str
    model_id: str | None = None
    user_id: str | None = None
    key_version: int | None = None
    request_key_version: int | None = None
    measurement: str | None = None
    epoch: int | None = None
    detail: str | None = None
    seq: int | None = None


def audit_values(e: AuditEntry) -> dict[str, Any]:
    """The values of the ``audit_log`` row that records ``e`` (its ``seq`` is the database's)."""
    return {
        "at": e.at,
        "event": e.event,
        "actor": e.actor,
        "model_id": e.model_id,
        "user_id": e.user_id,
        "key_version": e.key_version,
        "request_key_version": e.request_key_version,
        "measurement": e.measurement,
        "epoch": e.epoch,
        "detail": e.detail,
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A single-use nonce to record as used, and the audit entries that go with its use.

    Committed all or nothing: when the nonce was already used, none of the entries is written
    (and the caller refuses the request)."""

    nonce: bytes
    expires_at: float
    entries: tuple[AuditEntry, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class AccessChange:
    """What changed at one revocation epoch: a (user, model) pair's access, or with
    ``user_id`` ``None`` every user's (the model key was rotated)."""

    epoch: int
    model_id: str
    user_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class AccessChanges:
    """The epoch now and the changes since the one asked about (see ``Store.changes_since``)."""

    epoch: int
    changes: tuple[AccessChange, ...]
    complete: bool
