"""Storage of the KeyService: SQLAlchemy 2 Core over SQLite (default) or PostgreSQL.

The store deals only in ids, versions and opaque sealed blobs; sealing and unsealing under the
master key is the vault's job (:mod:`sealserve.keyservice._vault`).  Every method is
synchronous and short; the HTTP service calls them from a worker thread so that the event loop
never waits on the database.

Consistency that the release path relies on: a revoke deletes the grant and increments the
revocation epoch in one transaction, and :meth:`Store.release_records` reads the epoch
*before* the rows, so a release never carries an epoch newer than the grants it saw.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sealserve._log import get_logger
from sealserve.errors import Conflict, KeyServiceError, NotFound, SchemaVersionError
from sealserve.keyservice import _schema as t

__all__ = [
    "AuditEntry",
    "ModelRow",
    "PairRecords",
    "PrincipalRow",
    "Store",
    "StoreState",
    "sqlite_url",
]

_log = get_logger(__name__)
_EPOCH = "revocation_epoch"
_COMPONENT = "keyservice"


class StoreState(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


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


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite+pysqlite:///{path}"


class Store:
    """The KeyService's tables.  ``with Store(url) as store: ...``; thread-safe.

    Opening creates the tables of an empty database, migrates an older schema forward and
    refuses a newer one with :class:`~sealserve.errors.SchemaVersionError`.
    """

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty SQLAlchemy URL, got {url!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size!r}")
        try:
            self._url = sa.engine.make_url(url)
        except SQLAlchemyError as exc:
            raise ValueError(f"url {url!r} is not a valid SQLAlchemy URL: {exc}") from exc
        self._pool_size = pool_size
        self._engine: Engine | None = None
        self._state = StoreState.UNOPENED
        # SQLite has one writer at a time; taking the lock here avoids SQLITE_BUSY retries.
        self._write_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> StoreState:
        return self._state

    @property
    def dialect(self) -> str:
        return self._url.get_backend_name()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and messages."""
        return self._url.render_as_string(hide_password=True)

    def open(self) -> Store:
        if self._state is not StoreState.UNOPENED:
            raise KeyServiceError(f"store is {self._state.value}; open it only once")
        self._engine = self._create_engine()
        try:
            self._ensure_schema()
        except BaseException:
            self._engine.dispose()
            self._engine = None
            self._state = StoreState.CLOSED
            raise
        self._state = StoreState.OPENED
        _log.event("store.opened", url=self.safe_url, schema_version=t.SCHEMA_VERSION)
        return self

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._state = StoreState.CLOSED

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_engine(self) -> Engine:
        backend = self.dialect
        if backend == "sqlite":
            in_memory = self._url.database in (None, "", ":memory:")
            pool: dict[str, Any] = (
                {"poolclass": sa.pool.StaticPool}  # one shared connection: one database
                if in_memory
                else {
                    "poolclass": sa.pool.QueuePool,
                    "pool_size": self._pool_size,
                    "max_overflow": 0,
                }
            )
            engine = sa.create_engine(
                self._url, connect_args={"check_same_thread": False, "timeout": 30.0}, **pool
            )

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            return engine
        if backend == "postgresql":
            return sa.create_engine(
                self._url, pool_size=self._pool_size, max_overflow=2, pool_pre_ping=True
            )
        raise ValueError(
            f"url {self.safe_url!r} names database {backend!r}; use sqlite or postgresql"
        )

    def _ensure_schema(self) -> None:
        engine = self._require_engine()
        try:
            with engine.begin() as conn:
                inspector = sa.inspect(conn)
                if not inspector.has_table(t.schema_version.name):
                    existing = [n for n in inspector.get_table_names() if n in t.metadata.tables]
                    if existing:
                        raise SchemaVersionError(
                            f"database {self.safe_url} has KeyService tables "
                            f"({', '.join(sorted(existing))}) but no schema version; "
                            "it was not written by sealserve"
                        )
                    self._create_schema(conn)
                    return
                found = conn.execute(
                    sa.select(t.schema_version.c.version).where(
                        t.schema_version.c.component == _COMPONENT
                    )
                ).scalar_one_or_none()
        except SchemaVersionError:
            raise
        except SQLAlchemyError as exc:
            raise KeyServiceError(
                f"cannot open the KeyService database {self.safe_url}: {_brief(exc)}"
            ) from exc
        if found is None:
            raise SchemaVersionError(
                f"database {self.safe_url} has a schema table without a KeyService version"
            )
        if found > t.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database {self.safe_url} has KeyService schema version {found}, written by a "
                f"newer sealserve; this one supports up to version {t.SCHEMA_VERSION}. "
                "Upgrade sealserve, or point --db at another database."
            )
        # found < SCHEMA_VERSION: no older schema exists yet; migrations go here by version.

    def _create_schema(self, conn: Connection) -> None:
        t.metadata.create_all(conn)
        for ddl in t.APPEND_ONLY_DDL.get(conn.dialect.name, ()):
            conn.exec_driver_sql(ddl)
        conn.execute(
            sa.insert(t.schema_version).values(component=_COMPONENT, version=t.SCHEMA_VERSION)
        )
        conn.execute(sa.insert(t.counters).values(name=_EPOCH, value=0))
        _log.event("store.schema_created", url=self.safe_url, version=t.SCHEMA_VERSION)

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise KeyServiceError(f"store is {self._state.value}; open it first")
        return self._engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        engine = self._require_engine()
        with self._write_lock, engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # Take the write lock at BEGIN rather than at the first write.
                conn.exec_driver_sql("SELECT 1")
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._require_engine().connect() as conn:
            yield conn

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
                _insert_audit(
                    conn, [AuditEntry(at=at, event="register", actor=principal_id, detail=role)]
                )
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
            epoch = _bump_epoch(conn) if version > 1 else _read_epoch(conn)
            _insert_audit(
                conn,
                [
                    AuditEntry(
                        at=at,
                        event="put_model_key",
                        actor=owner_id,
                        model_id=model_id,
                        key_version=version,
                        epoch=epoch,
                    )
                ],
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
                epoch = _bump_epoch(conn)
            else:
                conn.execute(
                    sa.insert(t.grants).values(
                        model_id=model_id, user_id=user_id, sealed=sealed, created_at=at
                    )
                )
                epoch = _read_epoch(conn)
            _insert_audit(
                conn,
                [
                    AuditEntry(
                        at=at,
                        event="grant",
                        actor=owner_id,
                        model_id=model_id,
                        user_id=user_id,
                        epoch=epoch,
                        detail="replaced" if updated else "created",
                    )
                ],
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
            epoch = _bump_epoch(conn)
            _insert_audit(
                conn,
                [
                    AuditEntry(
                        at=at,
                        event="revoke",
                        actor=owner_id,
                        model_id=model_id,
                        user_id=user_id,
                        epoch=epoch,
                    )
                ],
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
                epoch = _bump_epoch(conn)
            _insert_audit(
                conn,
                [
                    AuditEntry(
                        at=at,
                        event="put_request_key",
                        actor=user_id,
                        model_id=model_id,
                        user_id=user_id,
                        request_key_version=version,
                        epoch=epoch,
                    )
                ],
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
            epoch = _bump_epoch(conn)
            _insert_audit(
                conn,
                [
                    AuditEntry(
                        at=at,
                        event="delete_request_key",
                        actor=user_id,
                        model_id=model_id,
                        user_id=user_id,
                        epoch=epoch,
                    )
                ],
            )
            return epoch

    # -- release ----------------------------------------------------------------------------

    def epoch(self) -> int:
        with self._read() as conn:
            return _read_epoch(conn)

    def release_records(self, pairs: Sequence[tuple[str, str]]) -> tuple[int, list[PairRecords]]:
        """The revocation epoch, and the grant, request key and current model key of each
        ``(user_id, model_id)`` pair, in the order given.

        One statement per pair reads the epoch and all the pair's rows from one snapshot; with
        several pairs the smallest epoch seen is returned, so a release never carries an epoch
        newer than a grant it saw (an older epoch only makes a runtime drop keys sooner).
        """
        out: list[PairRecords] = []
        epochs: list[int] = []
        with self._read() as conn:
            for user_id, model_id in pairs:
                row = conn.execute(_RELEASE_SQL, {"m": model_id, "u": user_id}).one()
                epochs.append(int(row.epoch))
                out.append(
                    PairRecords(
                        model_id=model_id,
                        user_id=user_id,
                        grant=_opt_bytes(row.grant_sealed),
                        model_key_version=row.mk_version if row.mk_sealed is not None else None,
                        model_key=_opt_bytes(row.mk_sealed),
                        request_key_version=row.rk_version,
                        request_key=_opt_bytes(row.rk_sealed),
                    )
                )
        return (min(epochs) if epochs else self.epoch()), out

    # -- audit ------------------------------------------------------------------------------

    def append_audit(self, entries: Iterable[AuditEntry]) -> None:
        items = list(entries)
        if not items:
            return
        with self._write() as conn:
            _insert_audit(conn, items)

    def audit(self, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Audit entries with ``seq > after``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.audit_log)
                .where(t.audit_log.c.seq > after)
                .order_by(t.audit_log.c.seq)
                .limit(limit)
            ).all()
        return [
            AuditEntry(
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
            for r in rows
        ]

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r}, state={self._state.value})"


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


def _opt_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _read_epoch(conn: Connection) -> int:
    return int(
        conn.execute(sa.select(t.counters.c.value).where(t.counters.c.name == _EPOCH)).scalar_one()
    )


def _bump_epoch(conn: Connection) -> int:
    conn.execute(
        sa.update(t.counters)
        .where(t.counters.c.name == _EPOCH)
        .values(value=t.counters.c.value + 1)
    )
    return _read_epoch(conn)


def _insert_audit(conn: Connection, entries: Sequence[AuditEntry]) -> None:
    conn.execute(
        sa.insert(t.audit_log),
        [
            {
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
            for e in entries
        ],
    )


def _brief(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
