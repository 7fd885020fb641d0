"""Storage of the KeyService: SQLAlchemy 2 Core over SQLite (default) or PostgreSQL.

The store deals only in ids, versions and opaque sealed blobs; sealing and unsealing under the
master key is the vault's job (:mod:`sealserve.keyservice._vault`).  Every method is
synchronous and short.  The HTTP service calls them from a worker thread, except the release
path's read on SQLite (:meth:`Store.release_records`: a few page reads in WAL mode, which
never wait for a writer), which is cheaper on the event loop than a thread hop.

Consistency that the release path relies on: a revoke deletes the grant and increments the
revocation epoch in one transaction, and :meth:`Store.release_records` reads the epoch
*before* the rows, so a release never carries an epoch newer than the grants it saw.  Single
use of nonces holds across every process sharing the database: :meth:`Store.commit_claims`
inserts each nonce into ``used_nonces`` (whose key refuses a second use) in the same
transaction as the audit rows of its release.

The store is the one way to the database.  Two of its methods, the release path's read
(:meth:`Store.release_records`) and the group commit (:meth:`Store.commit_claims`), run their
few statements on the driver's cursor (:mod:`._hotsql`, compiled by SQLAlchemy for the
dialect) because the Core execution layer costs more than the statements; see that module
for the figures.  Every other method goes through SQLAlchemy Core.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sealserve._log import get_logger
from sealserve._resource import Resource
from sealserve.errors import Conflict, KeyServiceError, NotFound
from sealserve.keyservice import _engine
from sealserve.keyservice import _schema as t
from sealserve.keyservice._audit import AuditChain, Head
from sealserve.keyservice._hotsql import AUDIT_LOCK, HotStatements
from sealserve.keyservice._records import (
    AccessChange,
    AccessChanges,
    AuditEntry,
    Claim,
    ModelRow,
    PairRecords,
    PrincipalRow,
)

__all__ = [
    "AuditEntry",
    "Claim",
    "ModelRow",
    "PairRecords",
    "PrincipalRow",
    "Store",
    "sqlite_url",
]

_log = get_logger(__name__)
_EPOCH = _engine.EPOCH
#: ``Connection.info`` key: the last audit entry a write transaction appended.
_APPENDED = "sealserve_audit_appended"


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite+pysqlite:///{path}"


class Store(Resource):
    """The KeyService's tables.  ``with Store(url) as store: ...``; thread-safe.

    Opening creates the tables of an empty database, migrates an older schema forward and
    refuses a newer one with :class:`~sealserve.errors.SchemaVersionError`.  Several processes
    (on one machine for SQLite, anywhere for PostgreSQL) may serve one database at once.
    """

    resource_name = "the store"

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty SQLAlchemy URL, got {url!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size!r}")
        try:
            self._url = sa.engine.make_url(url)
        except SQLAlchemyError as exc:
            raise ValueError(f"url {url!r} is not a valid SQLAlchemy URL: {exc}") from exc
        super().__init__()
        self._pool_size = pool_size
        self._engine: Engine | None = None
        self._sqlite = self.dialect == "sqlite"
        # One database connection in all (SQLite in memory): every use takes the lock.
        self._shared = self._sqlite and self._url.database in (None, "", ":memory:")
        # SQLite has one writer at a time; taking the lock here avoids waiting in busy sleeps
        # behind another thread of this process (other processes wait in BEGIN IMMEDIATE).
        self._write_lock = threading.RLock()
        self._hot: HotStatements | None = None
        # SQLite: the connection the release path reads on, held while the store is open.
        self._reader: Any = None
        self._reader_lock = threading.Lock()
        self._dbapi_error: type[Exception] = Exception
        self._integrity_error: type[Exception] = Exception
        # Links audit entries into the chain (the KeyService attaches it: it needs the key).
        self._chain: AuditChain | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return self._url.get_backend_name()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and messages."""
        return self._url.render_as_string(hide_password=True)

    def _open(self) -> None:
        # SQLite: one more connection than asked, for the release path's reader.
        size = self._pool_size + 1 if self._sqlite else self._pool_size
        engine = _engine.create_engine(self._url, pool_size=size)
        self._engine = engine
        self._ensure_schema()
        self._hot = HotStatements(engine.dialect)
        self._dbapi_error = engine.dialect.loaded_dbapi.Error
        self._integrity_error = engine.dialect.loaded_dbapi.IntegrityError
        if self._sqlite:
            self._reader = engine.raw_connection()
        _log.event("store.opened", url=self.safe_url, schema_version=t.SCHEMA_VERSION)

    def _close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _ensure_schema(self) -> None:
        with self._write_lock:
            _engine.ensure_schema(self._require_engine(), safe_url=self.safe_url)

    def _require_engine(self) -> Engine:
        self._check_opened()
        assert self._engine is not None
        return self._engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        engine = self._require_engine()
        with self._write_lock, engine.connect() as conn:
            conn.execution_options(**{_engine.WRITE: True})
            with conn.begin():
                yield conn
            appended = conn.info.pop(_APPENDED, 0)
            if appended and self._chain is not None:  # committed: this process saw it
                self._chain.observe(appended)

    # -- the audit chain ----------------------------------------------------------------------

    def attach_audit_chain(self, chain: AuditChain) -> None:
        """Link every audit entry written from now on with ``chain`` (the KeyService's)."""
        self._chain = chain

    def _require_chain(self) -> AuditChain:
        if self._chain is None:
            raise KeyServiceError(
                "the store has no audit chain attached: the KeyService attaches it (audit "
                "entries are never written unchained)"
            )
        return self._chain

    def _append_audit(self, conn: Connection, entries: Sequence[AuditEntry]) -> None:
        """Append ``entries`` to the chain, in ``conn``'s write transaction."""
        chain = self._require_chain()
        if conn.dialect.name == "postgresql":  # one appender at a time, across processes
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({AUDIT_LOCK})")
        row = conn.execute(
            sa.select(t.audit_log.c.seq, t.audit_log.c.chain, t.audit_log.c.mac)
            .order_by(t.audit_log.c.seq.desc())
            .limit(1)
        ).first()
        head = (
            None if row is None else Head(int(row.seq), _opt_bytes(row.chain), _opt_bytes(row.mac))
        )
        any_chained = head is not None and head.chain is None and _any_chained(conn)
        rows = chain.link(chain.check_head(head, any_chained=any_chained), entries)
        conn.execute(sa.insert(t.audit_log), [r.values() for r in rows])
        conn.info[_APPENDED] = rows[-1].seq

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        engine = self._require_engine()
        if self._shared:
            with self._write_lock, engine.connect() as conn:
                yield conn
        else:
            with engine.connect() as conn:
                yield conn

    # -- the KeyService's own sealed state -------------------------------------------------

    def get_state(self, name: str) -> bytes | None:
        """The sealed blob stored under ``name`` (``"master-key"``), or None."""
        with self._read() as conn:
            value = conn.execute(
                sa.select(t.keyservice_state.c.sealed).where(t.keyservice_state.c.name == name)
            ).scalar_one_or_none()
        return None if value is None else bytes(value)

    def put_state_once(self, name: str, sealed: bytes, *, at: float) -> bytes:
        """Store ``sealed`` under ``name`` unless a blob is there already; the stored blob
        (ours, or the one another process stored first)."""
        try:
            with self._write() as conn:
                conn.execute(
                    sa.insert(t.keyservice_state).values(name=name, sealed=sealed, created_at=at)
                )
        except IntegrityError:
            pass
        stored = self.get_state(name)
        if stored is None:  # pragma: no cover - a row we just inserted or lost the race to
            raise KeyServiceError(f"the KeyService state {name!r} vanished while it was stored")
        return stored

    def holds_sealed_records(self) -> bool:
        """Whether any model key, grant or request key is stored (sealed under a master key)."""
        with self._read() as conn:
            for table in (t.model_keys, t.grants, t.request_keys):
                if conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first():
                    return True
        return False

    # -- principals -------------------------------------------------------------------------

    def add_principal(self, principal_id: str, public_key: bytes, role: str, *, at: float) -> None:
        """Register a principal; :class:`Conflict` when the id is already registered."""
        try:
            with self._write() as conn:
                conn.execute(
                    sa.insert(t.principals).values(
                        principal_id=principal_id, public_key=public_key, role=role, created_at=at
                    )
                )
                self._audit_one(conn, at=at, event="register", actor=principal_id, detail=role)
        except IntegrityError as exc:
            raise Conflict(f"principal {principal_id} is already registered") from exc

    def get_principal(self, principal_id: str) -> PrincipalRow | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.principals.c.public_key, t.principals.c.role).where(
                    t.principals.c.principal_id == principal_id
                )
            ).first()
        if row is None:
            return None
        return PrincipalRow(principal_id, bytes(row.public_key), str(row.role))

    # -- models -----------------------------------------------------------------------------

    def get_model(self, model_id: str) -> ModelRow | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.models.c.owner_id, t.models.c.current_version).where(
                    t.models.c.model_id == model_id
                )
            ).first()
        return None if row is None else ModelRow(model_id, row.owner_id, row.current_version)

    def put_model_key(
        self, model_id: str, owner_id: str, version: int, sealed: bytes, *, at: float
    ) -> int:
        """Store version ``version`` of a model key, which must follow the current one.

        Version 1 creates the model; a later version rotates its key and increments the
        revocation epoch.  :class:`Conflict` when ``version`` is not current + 1.  Returns the
        revocation epoch after the change.
        """
        with self._write() as conn:
            current = conn.execute(
                sa.select(t.models.c.owner_id, t.models.c.current_version).where(
                    t.models.c.model_id == model_id
                )
            ).first()
            expected = 1 if current is None else current.current_version + 1
            if version != expected:
                raise Conflict(
                    f"model {model_id} key version {version} does not follow the current "
                    f"version {expected - 1}; send version {expected}"
                )
            if current is None:
                conn.execute(
                    sa.insert(t.models).values(
                        model_id=model_id, owner_id=owner_id, current_version=1, updated_at=at
                    )
                )
            else:
                conn.execute(
                    sa.update(t.models)
                    .where(t.models.c.model_id == model_id)
                    .values(current_version=version, updated_at=at)
                )
            conn.execute(
                sa.insert(t.model_keys).values(
                    model_id=model_id, version=version, sealed=sealed, created_at=at
                )
            )
            epoch = (
                _bump_epoch(conn, model_id=model_id, user_id=None, at=at)
                if version > 1
                else _read_epoch(conn)
            )
            self._audit_one(
                conn,
                at=at,
                event="put_model_key",
                actor=owner_id,
                model_id=model_id,
                key_version=version,
                epoch=epoch,
            )
            return epoch

    def list_grants(self, model_id: str) -> list[str]:
        """The user ids granted access to ``model_id``, sorted."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.grants.c.user_id)
                .where(t.grants.c.model_id == model_id)
                .order_by(t.grants.c.user_id)
            ).all()
        return [r.user_id for r in rows]

    # -- grants -----------------------------------------------------------------------------

    def set_grant(
        self, model_id: str, user_id: str, sealed: bytes, *, owner_id: str, at: float
    ) -> int:
        """Create or replace a grant.  Replacing one increments the revocation epoch (the old
        policy may have admitted runtimes the new one refuses).  Returns the epoch."""
        with self._write() as conn:
            updated = conn.execute(
                sa.update(t.grants)
                .where(t.grants.c.model_id == model_id, t.grants.c.user_id == user_id)
                .values(sealed=sealed, created_at=at)
            ).rowcount
            if updated:
                epoch = _bump_epoch(conn, model_id=model_id, user_id=user_id, at=at)
            else:
                conn.execute(
                    sa.insert(t.grants).values(
                        model_id=model_id, user_id=user_id, sealed=sealed, created_at=at
                    )
                )
                epoch = _read_epoch(conn)
            self._audit_one(
                conn,
                at=at,
                event="grant",
                actor=owner_id,
                model_id=model_id,
                user_id=user_id,
                epoch=epoch,
                detail="replaced" if updated else "created",
            )
            return epoch

    def delete_grant(self, model_id: str, user_id: str, *, owner_id: str, at: float) -> int:
        """Revoke: delete the grant and increment the revocation epoch, in one transaction.

        :class:`NotFound` when there is no such grant.  Returns the new epoch.
        """
        with self._write() as conn:
            deleted = conn.execute(
                sa.delete(t.grants).where(
                    t.grants.c.model_id == model_id, t.grants.c.user_id == user_id
                )
            ).rowcount
            if not deleted:
                raise NotFound(f"no grant of model {model_id} to user {user_id}")
            epoch = _bump_epoch(conn, model_id=model_id, user_id=user_id, at=at)
            self._audit_one(
                conn,
                at=at,
                event="revoke",
                actor=owner_id,
                model_id=model_id,
                user_id=user_id,
                epoch=epoch,
            )
            return epoch

    # -- request keys -----------------------------------------------------------------------

    def put_request_key(
        self, model_id: str, user_id: str, sealed: bytes, *, at: float
    ) -> tuple[int, int]:
        """Create or replace the user's request key for a model: ``(version, epoch)``.

        Replacing one increments the revocation epoch.
        """
        with self._write() as conn:
            current = conn.execute(
                sa.select(t.request_keys.c.version).where(
                    t.request_keys.c.model_id == model_id, t.request_keys.c.user_id == user_id
                )
            ).scalar_one_or_none()
            if current is None:
                version = 1
                conn.execute(
                    sa.insert(t.request_keys).values(
                        model_id=model_id,
                        user_id=user_id,
                        version=1,
                        sealed=sealed,
                        created_at=at,
                    )
                )
                epoch = _read_epoch(conn)
            else:
                version = current + 1
                conn.execute(
                    sa.update(t.request_keys)
                    .where(
                        t.request_keys.c.model_id == model_id,
                        t.request_keys.c.user_id == user_id,
                    )
                    .values(version=version, sealed=sealed, created_at=at)
                )
                epoch = _bump_epoch(conn, model_id=model_id, user_id=user_id, at=at)
            self._audit_one(
                conn,
                at=at,
                event="put_request_key",
                actor=user_id,
                model_id=model_id,
                user_id=user_id,
                request_key_version=version,
                epoch=epoch,
            )
            return version, epoch

    def delete_request_key(self, model_id: str, user_id: str, *, at: float) -> int:
        """Withdraw the user's request key; increments the epoch.  :class:`NotFound` if none."""
        with self._write() as conn:
            deleted = conn.execute(
                sa.delete(t.request_keys).where(
                    t.request_keys.c.model_id == model_id, t.request_keys.c.user_id == user_id
                )
            ).rowcount
            if not deleted:
                raise NotFound(f"no request key of user {user_id} for model {model_id}")
            epoch = _bump_epoch(conn, model_id=model_id, user_id=user_id, at=at)
            self._audit_one(
                conn,
                at=at,
                event="delete_request_key",
                actor=user_id,
                model_id=model_id,
                user_id=user_id,
                epoch=epoch,
            )
            return epoch

    # -- release ----------------------------------------------------------------------------

    def epoch(self) -> int:
        with self._read() as conn:
            return _read_epoch(conn)

    def changes_since(self, since: int, *, limit: int = 256) -> AccessChanges:
        """The revocation epoch and the access changes of the epochs after ``since`` (at most
        ``limit``), oldest first: ``complete`` when they are every change in between (false
        when there were more, or some predate this record: then a runtime drops every key
        older than the epoch)."""
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError(f"since must be an int >= 0, got {since!r}")
        hot = self._require_hot()
        try:
            with self._hot_reader() as conn:
                cur = conn.cursor()
                try:
                    epoch, rows = hot.read_changes(cur, since, limit + 1)
                finally:
                    cur.close()
        except self._dbapi_error as exc:
            raise self._failed(exc) from exc
        complete = len(rows) <= limit and len(rows) == max(0, epoch - since)
        changes = tuple(AccessChange(e, m, u) for e, m, u in rows) if complete else ()
        return AccessChanges(epoch=epoch, changes=changes, complete=complete)

    def release_records(self, pairs: Sequence[tuple[str, str]]) -> tuple[int, list[PairRecords]]:
        """The revocation epoch, and the grant, request key and current model key of each
        ``(user_id, model_id)`` pair, in the order given.

        One statement per pair reads the epoch and all the pair's rows from one snapshot; with
        several pairs the smallest epoch seen is returned, so a release never carries an epoch
        newer than a grant it saw (an older epoch only makes a runtime drop keys sooner).
        """
        if not pairs:
            return self.epoch(), []
        hot = self._require_hot()
        out: list[PairRecords] = []
        epochs: list[int] = []
        try:
            with self._hot_reader() as conn:
                cur = conn.cursor()
                try:
                    for user_id, model_id in pairs:
                        epoch, records = hot.read_pair(cur, user_id, model_id)
                        epochs.append(epoch)
                        out.append(records)
                finally:
                    cur.close()
        except self._dbapi_error as exc:
            raise self._failed(exc) from exc
        return min(epochs), out

    def commit_claims(
        self, claims: Sequence[Claim], *, purge_before: float | None = None
    ) -> list[bool]:
        """Record each claim's nonce as used and, if it was not used before, its audit entries,
        all in one transaction; per claim, whether its nonce was new.

        ``purge_before`` also deletes the used nonces that expired before that time.
        """
        if not claims and purge_before is None:
            return []
        hot = self._require_hot()
        with self._write_lock:
            try:
                return self._transaction(hot.claim_all, claims, purge_before)
            except self._integrity_error:  # a nonce was used before: tell which, one by one
                return self._transaction(hot.claim_each, claims, purge_before)
            except self._dbapi_error as exc:
                raise self._failed(exc) from exc

    def _transaction(
        self,
        write: Callable[..., tuple[list[bool], int]],
        claims: Sequence[Claim],
        purge_before: float | None,
    ) -> list[bool]:
        """Run ``write`` in one write transaction on a DBAPI connection (the write lock held)."""
        try:
            raw = self._require_engine().raw_connection()
        except SQLAlchemyError as exc:
            raise self._failed(exc) from exc
        try:
            conn: Any = raw.driver_connection
            cur = conn.cursor()
            try:
                if self._sqlite:
                    cur.execute("BEGIN IMMEDIATE")
                fresh, appended = write(cur, claims, purge_before=purge_before, chain=self._chain)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                cur.close()
        finally:
            raw.close()
        if appended and self._chain is not None:  # committed: this process saw it
            self._chain.observe(appended)
        return fresh

    def claim_nonce(self, nonce: bytes, *, expires_at: float) -> bool:
        """Record ``nonce`` as used until ``expires_at``; false if it was used already."""
        return self.commit_claims([Claim(nonce=nonce, expires_at=expires_at)])[0]

    @contextmanager
    def _hot_reader(self) -> Iterator[Any]:
        """A DBAPI connection to read the release path's records on."""
        if self._sqlite:
            lock = self._write_lock if self._shared else self._reader_lock
            with lock:
                if self._reader is None:
                    self._check_opened()  # raises: the reader lives while the store is open
                    raise AssertionError("an open SQLite store has a reader")
                yield self._reader.driver_connection
            return
        raw = self._require_engine().raw_connection()
        try:
            conn: Any = raw.driver_connection
            try:
                yield conn
            finally:
                conn.rollback()
        finally:
            raw.close()

    def _require_hot(self) -> HotStatements:
        self._check_opened()
        if self._hot is None or self._engine is None:
            raise AssertionError("an open store has its statements")
        return self._hot

    def _failed(self, exc: BaseException) -> KeyServiceError:
        _log.event("store.failed", error=type(exc).__name__)
        return KeyServiceError(f"the KeyService database failed: {_engine.brief(exc)}")

    # -- audit ------------------------------------------------------------------------------

    def append_audit(self, entries: Iterable[AuditEntry]) -> None:
        items = list(entries)
        if not items:
            return
        with self._write() as conn:
            self._append_audit(conn, items)

    def _audit_one(self, conn: Connection, **fields: Any) -> None:
        self._append_audit(conn, [AuditEntry(**fields)])

    def audit_page(
        self, *, after: int, limit: int
    ) -> tuple[int, bytes, list[tuple[int, AuditEntry, bytes]]]:
        """The verified head ``(seq, chain)`` and the chained entries after ``after`` up to it
        (at most ``limit``), oldest first, each with its digest.  The head is checked as for
        an append (:meth:`AuditChain.check_head`): :class:`AuditLogTampered` if it does not
        verify.  Entries of schema 4 (unchained) are not listed."""
        chain = self._require_chain()
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.audit_log.c.seq, t.audit_log.c.chain, t.audit_log.c.mac)
                .order_by(t.audit_log.c.seq.desc())
                .limit(1)
            ).first()
            head = (
                None
                if row is None
                else Head(int(row.seq), _opt_bytes(row.chain), _opt_bytes(row.mac))
            )
            any_chained = head is not None and head.chain is None and _any_chained(conn)
            seq, chain_value = chain.check_head(head, any_chained=any_chained)
            if head is None or head.chain is None:
                return 0, chain_value, []
            rows = conn.execute(
                sa.select(t.audit_log)
                .where(
                    t.audit_log.c.seq > after,
                    t.audit_log.c.seq <= seq,
                    t.audit_log.c.chain.is_not(None),
                )
                .order_by(t.audit_log.c.seq)
                .limit(limit)
            ).all()
        chain.observe(seq)
        return seq, chain_value, [(int(r.seq), _entry(r), bytes(r.digest)) for r in rows]

    def audit(self, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Audit entries with ``seq > after``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.audit_log)
                .where(t.audit_log.c.seq > after)
                .order_by(t.audit_log.c.seq)
                .limit(limit)
            ).all()
        return [_entry(r) for r in rows]

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r}, state={self._state.value})"


def _read_epoch(conn: Connection) -> int:
    return int(
        conn.execute(sa.select(t.counters.c.value).where(t.counters.c.name == _EPOCH)).scalar_one()
    )


def _bump_epoch(conn: Connection, *, model_id: str, user_id: str | None, at: float) -> int:
    """Increment the revocation epoch and record which access changed at the new epoch
    (``user_id`` ``None``: every user of the model), in the caller's transaction."""
    conn.execute(
        sa.update(t.counters)
        .where(t.counters.c.name == _EPOCH)
        .values(value=t.counters.c.value + 1)
    )
    epoch = _read_epoch(conn)
    conn.execute(
        sa.insert(t.access_changes).values(epoch=epoch, model_id=model_id, user_id=user_id, at=at)
    )
    return epoch


def _entry(r: Any) -> AuditEntry:
    return AuditEntry(
        seq=r.seq,
        at=r.at,
        event=r.event,
        actor=r.actor,
        model_id=r.model_id,
        user_id=r.user_id,
        key_version=r.key_version,
        request_key_version=r.request_key_version,
        measurement=r.measurement,
        epoch=r.epoch,
        detail=r.detail,
    )


def _any_chained(conn: Connection) -> bool:
    found = conn.execute(
        sa.select(sa.literal(1)).where(t.audit_log.c.chain.is_not(None)).limit(1)
    ).first()
    return found is not None


def _opt_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
