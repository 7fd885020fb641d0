"""The release path's statements, run straight on a DBAPI connection.

A release reads the records of its pairs (one statement per pair) and its group commit inserts
used nonces and audit rows.  SQLAlchemy's execution layer (a pooled connection and its
statement machinery) costs more than the statement itself on SQLite, so these few statements
are compiled once per dialect (by SQLAlchemy, so the SQL stays portable) and executed on the
driver's cursor: one release's read takes 49 us this way against 586 us through a Core
connection (medians of 7 interleaved rounds of 3,000 on the build machine, busy).  They are
not a second way to the database: :class:`~._store.Store` is the only one, and it runs these
for its release path and group commit; everything else in the store goes through SQLAlchemy
Core.

The group commit runs in a worker thread while the event loop keeps the GIL busy, and the
driver gives the GIL up around every statement it steps: each statement costs the writer a
wait for the GIL (up to the switch interval) before it can go on.  So a batch is written with
as few statements as possible: one multi-row insert of its nonces, one of its audit rows.  If
the nonces' insert hits a used nonce (a replay: rare), the caller rolls back and writes the
batch again claim by claim (:meth:`HotStatements.claim_each`), which tells which ones were new.
The audit rows are linked into the chain (:mod:`._audit`) after reading the head, in the same
transaction (on PostgreSQL under an advisory lock, one appender at a time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from sealserve.errors import KeyServiceError
from sealserve.keyservice._audit import AuditChain, ChainedEntry, Head
from sealserve.keyservice._records import AuditEntry, Claim, PairRecords

__all__ = ["HotStatements"]

#: Everything a release needs about one pair, and the epoch, from one snapshot.
_RELEASE_SQL = sa.text(
    """
    SELECT
      (SELECT c.value FROM counters c WHERE c.name = 'revocation_epoch') AS epoch,
      (SELECT g.sealed FROM grants g
        WHERE g.model_id = :m AND g.user_id = :u) AS grant_sealed,
      (SELECT r.version FROM request_keys r
        WHERE r.model_id = :m AND r.user_id = :u) AS rk_version,
      (SELECT r.sealed FROM request_keys r
        WHERE r.model_id = :m AND r.user_id = :u) AS rk_sealed,
      (SELECT mk.version FROM models m JOIN model_keys mk
        ON mk.model_id = m.model_id AND mk.version = m.current_version
        WHERE m.model_id = :m) AS mk_version,
      (SELECT mk.sealed FROM models m JOIN model_keys mk
        ON mk.model_id = m.model_id AND mk.version = m.current_version
        WHERE m.model_id = :m) AS mk_sealed
    """
)
# ON CONFLICT DO NOTHING: SQLite >= 3.24 and PostgreSQL >= 9.5 both say it this way.
_CLAIM_SQL = sa.text(
    "INSERT INTO used_nonces (nonce, expires_at) VALUES (:nonce, :expires_at) "
    "ON CONFLICT DO NOTHING"
)
_HEAD_SQL = sa.text("SELECT seq, chain, mac FROM audit_log ORDER BY seq DESC LIMIT 1")
_ANY_CHAINED_SQL = sa.text("SELECT 1 FROM audit_log WHERE chain IS NOT NULL LIMIT 1")
#: Key of the PostgreSQL advisory lock held while audit entries are appended (as the store's).
AUDIT_LOCK = 0x5EA1A0D1
_PURGE_SQL = sa.text("DELETE FROM used_nonces WHERE expires_at < :before")
_EPOCH_SQL = sa.text("SELECT value FROM counters WHERE name = 'revocation_epoch'")
_CHANGES_SQL = sa.text(
    "SELECT epoch, model_id, user_id FROM access_changes "
    "WHERE epoch > :since AND epoch <= :epoch ORDER BY epoch LIMIT :limit"
)


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    """A statement in the driver's own SQL and parameter style."""

    sql: str
    names: tuple[str, ...] | None  # positional parameter order, or None for named ones

    @classmethod
    def compile(cls, statement: sa.TextClause, dialect: Dialect) -> _Prepared:
        compiled = statement.compile(dialect=dialect)
        order = compiled.positiontup
        return cls(compiled.string, None if order is None else tuple(order))

    def params(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        if self.names is None:
            return values
        return tuple(values[name] for name in self.names)


#: Rows per multi-row insert (their parameters stay under SQLite's old limit of 999).
_NONCE_ROWS = 400
_AUDIT_ROWS = 70
_AUDIT_COLUMNS = (
    "seq",
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
    "digest",
    "chain",
    "mac",
)


class HotStatements:
    """The release path's statements for one dialect; methods take a DBAPI cursor."""

    def __init__(self, dialect: Dialect) -> None:
        self._release = _Prepared.compile(_RELEASE_SQL, dialect)
        self._claim = _Prepared.compile(_CLAIM_SQL, dialect)
        self._head = _Prepared.compile(_HEAD_SQL, dialect)
        self._any_chained = _Prepared.compile(_ANY_CHAINED_SQL, dialect)
        self._postgres = dialect.name == "postgresql"
        self._purge = _Prepared.compile(_PURGE_SQL, dialect)
        self._epoch = _Prepared.compile(_EPOCH_SQL, dialect)
        self._changes = _Prepared.compile(_CHANGES_SQL, dialect)
        if dialect.paramstyle == "qmark":
            mark = "?"
        elif dialect.paramstyle in ("format", "pyformat"):
            mark = "%s"
        else:
            raise ValueError(f"unsupported DBAPI parameter style {dialect.paramstyle!r}")
        self._nonce_row = f"({mark}, {mark})"
        self._audit_row = "(" + ", ".join(mark for _ in _AUDIT_COLUMNS) + ")"

    def read_pair(self, cursor: Any, user_id: str, model_id: str) -> tuple[int, PairRecords]:
        """The epoch and the records of one pair, from one statement (one snapshot)."""
        cursor.execute(self._release.sql, self._release.params({"m": model_id, "u": user_id}))
        epoch, grant, rk_version, rk_sealed, mk_version, mk_sealed = cursor.fetchone()
        return int(epoch), PairRecords(
            model_id=model_id,
            user_id=user_id,
            grant=_opt_bytes(grant),
            model_key_version=None if mk_sealed is None else int(mk_version),
            model_key=_opt_bytes(mk_sealed),
            request_key_version=None if rk_version is None else int(rk_version),
            request_key=_opt_bytes(rk_sealed),
        )

    def read_changes(
        self, cursor: Any, since: int, limit: int
    ) -> tuple[int, list[tuple[int, str, str | None]]]:
        """The revocation epoch, then the access changes after ``since`` up to it (at most
        ``limit``), oldest first: a revocation poll's two reads (the epoch first, so every
        change up to it is committed when the changes are read)."""
        cursor.execute(self._epoch.sql, self._epoch.params({}))
        (epoch,) = cursor.fetchone()
        epoch = int(epoch)
        if since >= epoch:
            return epoch, []
        params = {"since": since, "epoch": epoch, "limit": limit}
        cursor.execute(self._changes.sql, self._changes.params(params))
        return epoch, [(int(e), str(m), None if u is None else str(u)) for e, m, u in cursor]

    def claim_all(
        self,
        cursor: Any,
        claims: Sequence[Claim],
        *,
        purge_before: float | None,
        chain: AuditChain | None,
    ) -> tuple[list[bool], int]:
        """Insert every claim's nonce and the audit entries of the claims whose nonce is new,
        in a few multi-row statements, inside the caller's transaction: per claim, whether its
        nonce was new, and the last audit entry appended (0: none).  A later claim of a nonce
        already in the batch is refused here; a nonce used before the batch makes the nonces'
        insert raise the driver's ``IntegrityError`` (then roll back, and use
        :meth:`claim_each`).  ``purge_before`` also deletes the used nonces that expired before
        that time.  The audit entries are linked into ``chain`` after the head (:mod:`._audit`).
        """
        seen: set[bytes] = set()
        fresh: list[bool] = []
        nonces: list[Any] = []
        entries: list[AuditEntry] = []
        for claim in claims:
            new = claim.nonce not in seen
            fresh.append(new)
            if new:
                seen.add(claim.nonce)
                nonces += (claim.nonce, claim.expires_at)
                entries.extend(claim.entries)
        self._insert_rows(cursor, "used_nonces (nonce, expires_at)", self._nonce_row, 2, nonces)
        last = self._append_audit(cursor, entries, chain)
        if purge_before is not None:
            cursor.execute(self._purge.sql, self._purge.params({"before": purge_before}))
        return fresh, last

    def _append_audit(
        self, cursor: Any, entries: Sequence[AuditEntry], chain: AuditChain | None
    ) -> int:
        """Link ``entries`` after the head and insert them; the last seq (0: none)."""
        if not entries:
            return 0
        if chain is None:
            raise KeyServiceError("the store has no audit chain attached")
        if self._postgres:  # one appender at a time, across processes
            cursor.execute(f"SELECT pg_advisory_xact_lock({AUDIT_LOCK})")
        cursor.execute(self._head.sql, self._head.params({}))
        row = cursor.fetchone()
        head = None if row is None else Head(int(row[0]), _opt_bytes(row[1]), _opt_bytes(row[2]))
        any_chained = False
        if head is not None and head.chain is None:
            cursor.execute(self._any_chained.sql, self._any_chained.params({}))
            any_chained = cursor.fetchone() is not None
        rows = chain.link(chain.check_head(head, any_chained=any_chained), entries)
        values = [value for r in rows for value in _audit_row(r)]
        columns = "audit_log (" + ", ".join(_AUDIT_COLUMNS) + ")"
        self._insert_rows(cursor, columns, self._audit_row, len(_AUDIT_COLUMNS), values)
        return rows[-1].seq

    def _insert_rows(
        self, cursor: Any, target: str, row: str, width: int, values: list[Any]
    ) -> None:
        per_statement = _NONCE_ROWS if width == 2 else _AUDIT_ROWS
        rows = len(values) // width
        for start in range(0, rows, per_statement):
            count = min(per_statement, rows - start)
            # ``target`` and ``row`` are this module's constants; every value is a parameter.
            sql = f"INSERT INTO {target} VALUES " + ", ".join(row for _ in range(count))  # noqa: S608
            cursor.execute(sql, values[start * width : (start + count) * width])

    def claim_each(
        self,
        cursor: Any,
        claims: Sequence[Claim],
        *,
        purge_before: float | None,
        chain: AuditChain | None,
    ) -> tuple[list[bool], int]:
        """Insert each claim's nonce and, where it was not used before, its audit entries,
        one claim at a time (the way to tell which nonces were used), inside the caller's
        transaction: per claim, whether its nonce was new, and the last audit entry appended."""
        fresh: list[bool] = []
        entries: list[AuditEntry] = []
        for claim in claims:
            cursor.execute(
                self._claim.sql,
                self._claim.params({"nonce": claim.nonce, "expires_at": claim.expires_at}),
            )
            new = cursor.rowcount == 1
            fresh.append(new)
            if new:
                entries.extend(claim.entries)
        last = self._append_audit(cursor, entries, chain)
        if purge_before is not None:
            cursor.execute(self._purge.sql, self._purge.params({"before": purge_before}))
        return fresh, last


def _audit_row(row: ChainedEntry) -> list[Any]:
    values = row.values()
    return [values[name] for name in _AUDIT_COLUMNS]


def _opt_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
