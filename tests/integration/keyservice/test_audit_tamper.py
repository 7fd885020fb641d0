"""The audit log is tamper-evident on a real KeyService process, on SQLite and on PostgreSQL
(issue 10, item 8): whoever holds the database can drop the append-only triggers and delete
or cut back rows; an owner verifying against the signed checkpoints finds it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sealserve.attest import Policy
from sealserve.client import Owner, User
from sealserve.crypto import Identity, RequestKey, SymmetricKey
from sealserve.errors import AuditLogTampered
from tests.integration.keyservice.conftest import KeyServiceProcess

_DROP = {
    "sqlite": (
        "DROP TRIGGER IF EXISTS audit_log_no_update",
        "DROP TRIGGER IF EXISTS audit_log_no_delete",
    ),
    "postgresql": (
        "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
        "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
    ),
}


def _tamper(ks: KeyServiceProcess, statement: str) -> None:
    """What the holder of the database disk can do: its own SQL, triggers dropped first."""
    engine = sa.create_engine(ks.db_url)
    try:
        with engine.begin() as conn:
            for drop in _DROP[engine.dialect.name]:
                conn.exec_driver_sql(drop)
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def test_deleted_and_cut_back_history_is_detected(ks: KeyServiceProcess) -> None:
    owner = Owner(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    user = User(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    policy = Policy(measurements=frozenset({"ab" * 32}))
    with owner, user:
        owner.register()
        user.register()
        owner.put_model_key("m", SymmetricKey.generate())
        owner.grant("m", user.principal_id, policy)
        user.put_request_key(owner.model_id("m"), RequestKey.generate(), policy)
        owner.revoke("m", user.principal_id)
        first = owner.audit()
        assert [e["event"] for e in first.entries] == [
            "register",
            "put_model_key",
            "grant",
            "put_request_key",
            "revoke",
        ]
        kept = first.checkpoint
        assert owner.audit(since=kept).verified == 0

        # A row in the middle goes: the chain no longer reaches the signed checkpoint.
        _tamper(ks, "DELETE FROM audit_log WHERE seq = 3")
        with pytest.raises(AuditLogTampered, match="missing"):
            owner.audit()

    # The history is cut back to a genuine earlier head, and the KeyService restarted (so it
    # forgot what it saw): an owner holding the later checkpoint finds the truncation.
    _tamper(ks, f"DELETE FROM audit_log WHERE seq > {kept.seq - 2}")  # noqa: S608 - the attack
    ks.stop()
    ks.start()
    owner = Owner(owner.identity, keyservice_url=ks.url, pin=ks.pin())
    with owner:
        with pytest.raises(AuditLogTampered, match="truncated"):
            owner.audit(since=kept)
        with pytest.raises(AuditLogTampered, match="truncated"):
            owner.audit(through=kept)
