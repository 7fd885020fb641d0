"""The audit log's chain on the KeyService's side: linking new entries, checking the head.

Every audit entry is written with its digest, its chain value (which binds every entry before
it: :mod:`sealserve.protocol.audit`) and a MAC of ``(seq, chain)`` under a key derived from the
master key, in the transaction that appends it, after reading the current head.  The database
is not trusted: before linking to the head (or signing a checkpoint of it) the KeyService checks
the head's MAC, so rows forged on a copy of the database (which cannot carry a valid MAC) are
refused, and it remembers the highest entry it has seen, so a history cut back while it runs is
refused too (:class:`~sealserve.errors.AuditLogTampered`).  A rewritten or removed entry below
the head changes the chain, which owners find when they verify a signed checkpoint.

Entries written before schema version 5 carry no chain; the chain starts after them, from
:data:`~sealserve.protocol.audit.GENESIS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import threading
from collections.abc import Sequence

from sealserve._log import get_logger
from sealserve.errors import AuditLogTampered
from sealserve.keyservice._records import AuditEntry, audit_values
from sealserve.protocol import audit

__all__ = ["AuditChain", "ChainedEntry", "Head"]

_log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """The last row of ``audit_log`` (``chain`` and ``mac`` ``None`` for a row of schema 4)."""

    seq: int
    chain: bytes | None
    mac: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class ChainedEntry:
    """An entry with its place in the chain: the row to insert."""

    seq: int
    entry: AuditEntry
    digest: bytes
    chain: bytes
    mac: bytes

    def values(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            **audit_values(self.entry),
            "digest": self.digest,
            "chain": self.chain,
            "mac": self.mac,
        }


class AuditChain:
    """Links entries to the head under the KeyService's audit key; thread-safe."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(f"key must be 32 bytes, got {len(key)}")
        self._key = bytes(key)
        self._lock = threading.Lock()
        self._seen = 0

    @property
    def seen(self) -> int:
        """The highest entry this process wrote or verified."""
        with self._lock:
            return self._seen

    def mac(self, seq: int, chain: bytes) -> bytes:
        message = b"sealserve/audit/mac\0" + seq.to_bytes(8, "big") + chain
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def check_head(self, head: Head | None, *, any_chained: bool) -> tuple[int, bytes]:
        """``(seq, chain)`` to link after, once ``head`` is checked: its MAC verifies, it is
        not below what this process has seen, and no unchained row follows chained ones
        (``any_chained``: whether any row has a chain).  :class:`AuditLogTampered` otherwise."""
        if head is None or head.chain is None or head.mac is None:
            if any_chained:
                self._broken("an unchained entry follows chained ones", head)
            seen = self.seen
            if seen and (head is None or head.seq < seen):
                self._broken(f"the log ends before entry {seen}, which this KeyService saw", head)
            return (0 if head is None else head.seq), audit.GENESIS
        if not hmac.compare_digest(self.mac(head.seq, head.chain), head.mac):
            self._broken("the last entry's MAC does not verify", head)
        if head.seq < self.seen:
            self._broken(f"the log ends before entry {self.seen}, which this KeyService saw", head)
        return head.seq, head.chain

    def link(self, after: tuple[int, bytes], entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
        """The rows of ``entries`` appended after ``after`` (from :meth:`check_head`)."""
        seq, chain = after
        rows = []
        for entry in entries:
            seq += 1
            digest = audit.entry_digest(seq, audit_values(entry))
            chain = audit.next_chain(chain, digest)
            rows.append(ChainedEntry(seq, entry, digest, chain, self.mac(seq, chain)))
        return rows

    def observe(self, seq: int) -> None:
        """Remember that entry ``seq`` is committed (written or verified by this process)."""
        with self._lock:
            self._seen = max(self._seen, seq)

    def _broken(self, why: str, head: Head | None) -> None:
        _log.event(
            "audit.chain_broken",
            level=logging.ERROR,
            why=why,
            head=None if head is None else head.seq,
        )
        raise AuditLogTampered(f"the audit log was tampered with: {why}")
