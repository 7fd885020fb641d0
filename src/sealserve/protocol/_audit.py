"""The KeyService's audit log as owners verify it: a hash chain and signed checkpoints.

Each entry of the log has a **digest**, the SHA-256 of its canonical JSON (its sequence number
and every field), and the log a **chain**: ``chain(n) = SHA-256(label || chain(n-1) ||
digest(n))``, from 32 zero bytes before the first chained entry.  So the chain value of an
entry binds every entry before it: rewriting, removing or inserting one changes every chain
value after it.  The database keeps the chain values with a MAC under a key only the attested
KeyService holds (so the disk cannot extend the chain), and the KeyService **signs
checkpoints** ``(seq, chain)`` of the head it verified, with its attested Ed25519 key.

An owner fetches the entries after a point it trusts (a checkpoint it verified before, or the
start) and the current checkpoint, recomputes the chain, and compares: a rewritten history does
not reach the signed chain value, and a truncated one ends before a checkpoint the owner
already holds.  The entries that do not concern the owner come as digests only.  Pure
functions: :func:`entry_digest`, :func:`next_chain`, :func:`checkpoint_payload`,
:func:`verify_audit`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final

from sealserve.crypto import canonical_encode as _canonical_encode
from sealserve.crypto import verify_signature
from sealserve.errors import AuditLogTampered, InvalidSignature
from sealserve.protocol import _wire as wire
from sealserve.protocol._schema import Message, Rule

__all__ = [
    "AUDIT_FIELDS",
    "GENESIS",
    "AuditCheckpoint",
    "AuditPage",
    "AuditPoint",
    "AuditRecord",
    "AuditVerification",
    "checkpoint_payload",
    "entry_digest",
    "next_chain",
    "verify_audit",
]

#: The fields of an audit entry, besides its sequence number.
AUDIT_FIELDS: Final = (
    "at",
    "event",
    "actor",
    "model_id",
    "user_id",
    "key_version",
    "request_key_version",
    "measurement",
    "epoch",
    "detail",
)
#: The chain value before the first chained entry.
GENESIS: Final = bytes(32)
_HEX64 = Annotated[str, Rule(pattern=r"^[0-9a-f]{64}$")]


def entry_digest(seq: int, fields: Mapping[str, Any]) -> bytes:
    """The digest of entry ``seq`` with ``fields`` (each of :data:`AUDIT_FIELDS`; ``None``
    where absent)."""
    doc = {name: fields.get(name) for name in AUDIT_FIELDS}
    if doc["at"] is not None:  # a float however it was given (the database stores a double)
        doc["at"] = float(doc["at"])
    doc["seq"] = seq
    return hashlib.sha256(b"sealserve/audit/entry\0" + wire.canonical_json(doc)).digest()


def next_chain(previous: bytes, digest: bytes) -> bytes:
    """The chain value of an entry whose digest is ``digest``, after ``previous``."""
    return hashlib.sha256(b"sealserve/audit/chain\0" + previous + digest).digest()


def checkpoint_payload(*, keyservice_id: str, seq: int, chain: bytes, at: float) -> bytes:
    """What the KeyService signs for a checkpoint of its audit log."""
    return _canonical_encode(
        {
            "purpose": "sealserve/keyservice/audit-checkpoint",
            "keyservice_id": keyservice_id,
            "seq": seq,
            "chain": bytes(chain),
            "at": repr(float(at)),
        }
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord(Message):
    """One entry of a page: its number and digest, and its fields when it concerns the
    principal who asked (else ``entry`` is empty)."""

    seq: Annotated[int, Rule(ge=1)]
    digest: _HEX64
    entry: Annotated[
        dict[str, Any],
        Rule(description="The entry's fields (AUDIT_FIELDS), or {} for another's entry."),
    ] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditCheckpoint(Message):
    """The head of the log as the attested KeyService verified it, signed."""

    keyservice_id: str
    seq: Annotated[int, Rule(ge=0)]
    chain: _HEX64
    at: float
    signature: Annotated[str, Rule(description="Ed25519 signature of checkpoint_payload.")]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditPage(Message):
    """``GET /v1/audit?after=N``: the chained entries after ``N`` up to the checkpoint (at most
    a page of them), and the checkpoint."""

    records: tuple[AuditRecord, ...]
    checkpoint: AuditCheckpoint


@dataclasses.dataclass(frozen=True, slots=True)
class AuditPoint:
    """A point of the chain an owner trusts: the start, or a checkpoint it verified."""

    seq: int
    chain: bytes

    @classmethod
    def start(cls) -> AuditPoint:
        return cls(0, GENESIS)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "chain": self.chain.hex()}

    @classmethod
    def from_json(cls, doc: Any) -> AuditPoint:
        try:
            seq, chain = doc["seq"], bytes.fromhex(doc["chain"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an audit checkpoint: {doc!r}") from exc
        if type(seq) is not int or seq < 0 or len(chain) != 32:
            raise ValueError(f"not an audit checkpoint: {doc!r}")
        return cls(seq, chain)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditVerification:
    """What :func:`verify_audit` established: the new trusted point, and the entries that
    concern the principal, in order (each with its ``seq``)."""

    checkpoint: AuditPoint
    entries: tuple[dict[str, Any], ...]
    #: Entries verified (all of them, including others' digests).
    verified: int


def verify_audit(
    pages: Sequence[AuditPage],
    *,
    start: AuditPoint,
    keyservice_id: str,
    signing_public_key: bytes,
    through: AuditPoint | None = None,
) -> AuditVerification:
    """Verify consecutive pages fetched after ``start`` against the last page's checkpoint
    (and, with ``through``, that the chain passes through that point too: a checkpoint kept
    from before, when verifying again from the start).

    :class:`~sealserve.errors.AuditLogTampered` (saying what) when a checkpoint is not signed
    by the attested KeyService, an entry was altered, removed or inserted, or the log ends
    before ``start`` (truncated).
    """
    if not pages:
        raise ValueError("pages must not be empty")
    for page in pages:
        _check_checkpoint(page.checkpoint, keyservice_id, signing_public_key)
    final = pages[-1].checkpoint
    for point in (start, through):
        if point is not None and final.seq < point.seq:
            raise AuditLogTampered(
                f"the audit log was truncated: it ends at entry {final.seq}, before entry "
                f"{point.seq} of a checkpoint verified earlier"
            )
    chain, seq, verified = start.chain, start.seq, 0
    entries: list[dict[str, Any]] = []
    for record in _records(pages):
        # From the start, the first chained entry may follow unchained ones of schema 4.
        if record.seq != seq + 1 and not (seq == 0 and record.seq > 0):
            raise AuditLogTampered(
                f"entry {seq + 1} of the audit log is missing (the next one is {record.seq})"
            )
        digest = bytes.fromhex(record.digest)
        if record.entry:
            if entry_digest(record.seq, record.entry) != digest:
                raise AuditLogTampered(f"entry {record.seq} of the audit log was altered")
            entries.append({"seq": record.seq, **record.entry})
        chain, seq = next_chain(chain, digest), record.seq
        verified += 1
        if through is not None and seq == through.seq and chain != through.chain:
            raise AuditLogTampered(
                f"the audit log was rewritten: entry {seq} no longer chains to the checkpoint "
                "verified earlier"
            )
    if seq != final.seq:
        raise AuditLogTampered(
            f"the pages end at entry {seq}, not at the checkpoint's entry {final.seq}"
        )
    if chain != bytes.fromhex(final.chain):
        raise AuditLogTampered(
            f"the audit log was rewritten: its entries up to {final.seq} do not chain to the "
            "checkpoint the KeyService signed"
            + (" (or to the checkpoint verified earlier)" if start.seq else "")
        )
    return AuditVerification(AuditPoint(final.seq, chain), tuple(entries), verified)


def _records(pages: Iterable[AuditPage]) -> Iterable[AuditRecord]:
    for page in pages:
        yield from page.records


def _check_checkpoint(cp: AuditCheckpoint, keyservice_id: str, public_key: bytes) -> None:
    if cp.keyservice_id != keyservice_id or not math.isfinite(cp.at):
        raise AuditLogTampered("the audit checkpoint is not this KeyService's")
    try:
        payload = checkpoint_payload(
            keyservice_id=cp.keyservice_id, seq=cp.seq, chain=bytes.fromhex(cp.chain), at=cp.at
        )
        verify_signature(public_key, payload, wire.b64decode(cp.signature, name="signature"))
    except (ValueError, InvalidSignature):
        raise AuditLogTampered(
            "the audit checkpoint is not signed by the attested KeyService"
        ) from None
