"""The store's database engine: connection settings per backend, transaction modes, the schema.

SQLite (the default) runs in WAL mode with ``synchronous=FULL``: a commit is on disk when it
returns, which the release path relies on (its audit rows and used nonce are durable before
the keys leave; see docs/operating.md).  Several processes may share one SQLite file, so a
write transaction starts with ``BEGIN IMMEDIATE``: it takes the database's write lock at once
and waits for it (``busy_timeout``) instead of failing half way when another process writes.
Reads start a plain deferred ``BEGIN`` and never wait for a writer.

:func:`ensure_schema` creates the tables of an empty database, migrates an older schema forward
and refuses a newer one, holding the write lock (SQLite) or an advisory lock (PostgreSQL), so
several processes starting at once on a new database create it once.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from sealserve._log import get_logger
from sealserve.errors import KeyServiceError, SchemaVersionError
from sealserve.keyservice import _schema as t

__all__ = ["COMPONENT", "EPOCH", "WRITE", "brief", "create_engine", "ensure_schema"]

_log = get_logger(__name__)
#: Name of the revocation epoch in ``counters``.
EPOCH: Final = "revocation_epoch"
#: This component's row in the schema table.
COMPONENT: Final = "keyservice"
#: Execution option of a connection whose transactions write (``BEGIN IMMEDIATE`` on SQLite).
WRITE: Final = "sealserve_write"
_BUSY_TIMEOUT_S: Final = 30.0
#: Key of the PostgreSQL advisory lock held while the schema is checked or changed.
_SCHEMA_LOCK: Final = 0x5EA15E7


def create_engine(url: sa.URL, *, pool_size: int) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL), configured as the module says."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        in_memory = url.database in (None, "", ":memory:")
        pool: dict[str, Any] = (
            {"poolclass": sa.pool.StaticPool}  # one shared connection: one database
            if in_memory
            else {"poolclass": sa.pool.QueuePool, "pool_size": pool_size, "max_overflow": 0}
        )
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": _BUSY_TIMEOUT_S},
            **pool,
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # The driver would BEGIN (deferred) on its own before a write; we say how instead.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            writes = conn.get_execution_options().get(WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

        return engine
    if backend == "postgresql":
        return sa.create_engine(url, pool_size=pool_size, max_overflow=2, pool_pre_ping=True)
    safe = url.render_as_string(hide_password=True)
    raise ValueError(f"url {safe!r} names database {backend!r}; use sqlite or postgresql")


def ensure_schema(engine: Engine, *, safe_url: str) -> None:
    """Create, migrate or check the schema; :class:`SchemaVersionError` when it is newer than
    this sealserve or not sealserve's."""
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
                _ensure(conn, safe_url)
    except SchemaVersionError:
        raise
    except SQLAlchemyError as exc:
        raise KeyServiceError(
            f"cannot open the KeyService database {safe_url}: {brief(exc)}"
        ) from exc


def _ensure(conn: Connection, safe_url: str) -> None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(t.schema_version.name):
        existing = [n for n in inspector.get_table_names() if n in t.metadata.tables]
        if existing:
            raise SchemaVersionError(
                f"database {safe_url} has KeyService tables ({', '.join(sorted(existing))}) "
                "but no schema version; it was not written by sealserve"
            )
        _create(conn, safe_url)
        return
    found = conn.execute(
        sa.select(t.schema_version.c.version).where(t.schema_version.c.component == COMPONENT)
    ).scalar_one_or_none()
    if found is None:
        raise SchemaVersionError(
            f"database {safe_url} has a schema table without a KeyService version"
        )
    if found > t.SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database {safe_url} has KeyService schema version {found}, written by a newer "
            f"sealserve; this one supports up to version {t.SCHEMA_VERSION}. "
            "Upgrade sealserve, or point --db at another database."
        )
    if found < t.SCHEMA_VERSION:
        _migrate(conn, found, safe_url)


def _create(conn: Connection, safe_url: str) -> None:
    t.metadata.create_all(conn)
    for ddl in t.APPEND_ONLY_DDL.get(conn.dialect.name, ()):
        conn.exec_driver_sql(ddl)
    conn.execute(sa.insert(t.schema_version).values(component=COMPONENT, version=t.SCHEMA_VERSION))
    conn.execute(sa.insert(t.counters).values(name=EPOCH, value=0))
    _log.event("store.schema_created", url=safe_url, version=t.SCHEMA_VERSION)


def _migrate(conn: Connection, found: int, safe_url: str) -> None:
    """Bring a schema of version ``found`` forward, one version at a time."""
    version = found
    if version == 1:  # 1 -> 2: single use of nonces moves from memory to the database
        t.used_nonces.create(conn)
        version = 2
    if version == 2:  # 2 -> 3: the master key is sealed in the database (see _vault)
        t.keyservice_state.create(conn)
        version = 3
    if version == 3:  # 3 -> 4: what each epoch changed (epochs before it are not recorded)
        t.access_changes.create(conn)
        version = 4
    if version == 4:  # 4 -> 5: the audit chain (rows before it stay unchained)
        blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
        for column in ("digest", "chain", "mac"):
            conn.exec_driver_sql(f"ALTER TABLE audit_log ADD COLUMN {column} {blob}")
        version = 5
    conn.execute(
        sa.update(t.schema_version)
        .where(t.schema_version.c.component == COMPONENT)
        .values(version=version)
    )
    _log.event("store.schema_migrated", url=safe_url, from_version=found, to_version=version)


def brief(exc: BaseException) -> str:
    """The first line of a database error, for messages."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
