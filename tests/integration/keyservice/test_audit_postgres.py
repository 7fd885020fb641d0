"""The append-only audit log on a real PostgreSQL: the database itself refuses UPDATE, DELETE
and TRUNCATE on it (the SQLite twin is tests/unit/keyservice/test_store.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sealserve.keyservice._audit import AuditChain
from sealserve.keyservice._store import AuditEntry, Store
from tests.integration.keyservice.conftest import fresh_postgres_database

OWNER = "a" * 64
MODEL = f"{OWNER}/resnet"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "TRUNCATE audit_log CASCADE",
    ],
)
def test_postgres_audit_log_is_append_only(statement: str) -> None:
    with fresh_postgres_database() as url, Store(url, pool_size=1) as store:
        store.attach_audit_chain(AuditChain(b"k" * 32))
        store.add_principal(OWNER, b"o" * 32, "owner", at=1.0)
        store.append_audit([AuditEntry(at=9.0, event="release", actor="r" * 64, model_id=MODEL)])
        before = store.audit()
        assert [e.event for e in before] == ["register", "release"]
        engine = store._require_engine()
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
        assert store.audit() == before
        # appending still works after a refusal
        store.append_audit([AuditEntry(at=10.0, event="release", actor="s" * 64, model_id=MODEL)])
        assert len(store.audit()) == 3
