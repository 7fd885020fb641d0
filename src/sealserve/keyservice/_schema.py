"""The KeyService's tables (SQLAlchemy Core) and the schema version they carry.

Nothing secret is stored in the clear: every key and every grant is a ``sealed`` blob, sealed
under the master key with a context that names the row (model id, user id, version), so a copy
of the database reveals no key and a row moved to another place does not unseal there.  Ids,
roles, versions and times are stored in the clear; they are what the service looks rows up by.

The audit log is append-only: the database itself refuses ``UPDATE`` and ``DELETE`` on it
(a trigger on SQLite and PostgreSQL), not only this code.  Triggers do not stop whoever holds
the disk, so each row also carries its place in a hash chain with a MAC under a key only the
attested KeyService holds (:mod:`._audit`): a rewritten or truncated history is detected.

``used_nonces`` makes single use hold across every process that serves the database: a
challenge nonce is inserted in the same transaction as the audit rows of the release that used
it, and a signed request's nonce before the request takes effect; the primary key refuses the
second use.  Rows whose nonce has expired are purged (an expired nonce is refused anyway).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "APPEND_ONLY_DDL",
    "access_changes",
    "SCHEMA_VERSION",
    "audit_log",
    "counters",
    "grants",
    "keyservice_state",
    "metadata",
    "model_keys",
    "models",
    "principals",
    "request_keys",
    "schema_version",
    "used_nonces",
]

#: Version of the tables below.  A database with a larger version was written by a newer
#: sealserve and is refused; a smaller one is migrated forward when the store opens
#: (version 1 had no ``used_nonces``: challenges lived in one process's memory; version 2 had
#: no ``keyservice_state``: the master key was a file the host could read; version 3 had no
#: ``access_changes``: runtimes learnt of a revocation only from their next release; version 4
#: had no chain in ``audit_log``: its history could be rewritten on a copy of the database).
SCHEMA_VERSION = 5

metadata = MetaData()

schema_version = Table(
    "sealserve_schema",
    metadata,
    Column("component", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
)

principals = Table(
    "principals",
    metadata,
    Column("principal_id", String(64), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("model_id", String(200), primary_key=True),
    Column("owner_id", String(64), ForeignKey("principals.principal_id"), nullable=False),
    Column("current_version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

model_keys = Table(
    "model_keys",
    metadata,
    Column("model_id", String(200), ForeignKey("models.model_id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("model_id", String(200), ForeignKey("models.model_id"), primary_key=True),
    Column("user_id", String(64), ForeignKey("principals.principal_id"), primary_key=True),
    # The runtime policy the owner set, sealed (integrity and confidentiality at rest).
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

request_keys = Table(
    "request_keys",
    metadata,
    Column("model_id", String(200), primary_key=True),
    Column("user_id", String(64), ForeignKey("principals.principal_id"), primary_key=True),
    Column("version", Integer, nullable=False),
    # The request key and the user's runtime policy, sealed together.
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

counters = Table(
    "counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("event", String(32), nullable=False),
    # Who asked: a principal id, or for a release the runtime key's fingerprint.
    Column("actor", String(64), nullable=False),
    Column("model_id", String(200), nullable=True),
    Column("user_id", String(64), nullable=True),
    Column("key_version", Integer, nullable=True),
    Column("request_key_version", Integer, nullable=True),
    Column("measurement", String(128), nullable=True),
    Column("epoch", BigInteger, nullable=True),
    Column("detail", Text, nullable=True),
    # The hash chain (sealserve.protocol.audit) and a MAC of (seq, chain) under the
    # KeyService's audit key; NULL for rows written before schema version 5.
    Column("digest", LargeBinary, nullable=True),
    Column("chain", LargeBinary, nullable=True),
    Column("mac", LargeBinary, nullable=True),
)

used_nonces = Table(
    "used_nonces",
    metadata,
    # A challenge nonce as issued, or a digest naming a signed request's (principal, nonce).
    Column("nonce", LargeBinary, primary_key=True),
    # When the nonce stops being accepted; the row may be purged some time after.
    Column("expires_at", Float, nullable=False),
    Index("used_nonces_expires_at", "expires_at"),
)

access_changes = Table(
    "access_changes",
    metadata,
    # Each increment of the revocation epoch, in the same transaction: what it changed.  A
    # runtime polls for the changes after the epoch it holds keys of (docs/keyservice.md).
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("model_id", String(200), nullable=False),
    # NULL: every user of the model (its key was rotated).
    Column("user_id", String(64), nullable=True),
    Column("at", Float, nullable=False),
)

keyservice_state = Table(
    "keyservice_state",
    metadata,
    # "master-key": the master key sealed under the KeyService's TEE sealing key.
    Column("name", String(32), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

#: DDL that makes ``audit_log`` append-only, per dialect name.
APPEND_ONLY_DDL: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION sealserve_audit_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION sealserve_audit_append_only()",
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION sealserve_audit_append_only()",
    ),
}
