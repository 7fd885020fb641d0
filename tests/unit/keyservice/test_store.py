"""The store: schema versioning, versions, grants, the epoch and the append-only audit log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from sealserve.errors import Conflict, KeyServiceError, NotFound, SchemaVersionError
from sealserve.keyservice._schema import SCHEMA_VERSION, schema_version
from sealserve.keyservice._store import AuditEntry, Store, StoreState

OWNER = "a" * 64
USER = "b" * 64
MODEL = f"{OWNER}/resnet"


@pytest.fixture
def store() -> Iterator[Store]:
    with Store("sqlite+pysqlite:///:memory:") as s:
        s.add_principal(OWNER, b"o" * 32, "owner", at=1.0)
        s.add_principal(USER, b"u" * 32, "user", at=1.0)
        yield s


def test_states_and_use_after_close() -> None:
    s = Store("sqlite+pysqlite:///:memory:")
    assert s.state is StoreState.UNOPENED
    with pytest.raises(KeyServiceError, match="open it first"):
        s.epoch()
    s.open()
    assert s.state is StoreState.OPENED
    assert s.epoch() == 0
    s.close()
    assert s.state is StoreState.CLOSED
    with pytest.raises(KeyServiceError, match="closed"):
        s.epoch()
    with pytest.raises(KeyServiceError, match="only once"):
        s.open()


@pytest.mark.parametrize("url", ["", "not a url", "mysql://x/y"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        Store(url).open()


def test_principals(store: Store) -> None:
    row = store.get_principal(OWNER)
    assert row is not None
    assert row.role == "owner"
    assert row.public_key == b"o" * 32
    assert store.get_principal("c" * 64) is None
    with pytest.raises(Conflict, match="already registered"):
        store.add_principal(OWNER, b"o" * 32, "owner", at=2.0)


def test_model_key_versions_follow_each_other(store: Store) -> None:
    with pytest.raises(Conflict, match="send version 1"):
        store.put_model_key(MODEL, OWNER, 2, b"k2", at=1.0)
    assert store.put_model_key(MODEL, OWNER, 1, b"k1", at=1.0) == 0
    model = store.get_model(MODEL)
    assert model is not None
    assert model.current_version == 1
    assert model.owner_id == OWNER
    with pytest.raises(Conflict, match="send version 2"):
        store.put_model_key(MODEL, OWNER, 1, b"again", at=2.0)
    # rotation bumps the revocation epoch
    assert store.put_model_key(MODEL, OWNER, 2, b"k2", at=3.0) == 1
    _, (rec,) = store.release_records([(USER, MODEL)])
    assert rec.model_key == b"k2"
    assert rec.model_key_version == 2


def test_grant_revoke_and_epoch(store: Store) -> None:
    store.put_model_key(MODEL, OWNER, 1, b"k1", at=1.0)
    assert store.set_grant(MODEL, USER, b"policy", owner_id=OWNER, at=2.0) == 0
    assert store.list_grants(MODEL) == [USER]
    assert store.put_request_key(MODEL, USER, b"rk", at=3.0) == (1, 0)
    epoch, (rec,) = store.release_records([(USER, MODEL)])
    assert epoch == 0
    assert (rec.grant, rec.request_key, rec.request_key_version) == (b"policy", b"rk", 1)
    assert store.delete_grant(MODEL, USER, owner_id=OWNER, at=4.0) == 1
    with pytest.raises(NotFound):
        store.delete_grant(MODEL, USER, owner_id=OWNER, at=5.0)
    epoch, (rec,) = store.release_records([(USER, MODEL)])
    assert epoch == 1
    assert rec.grant is None
    assert rec.request_key == b"rk"
    # replacing a grant or a request key bumps the epoch too
    store.set_grant(MODEL, USER, b"p1", owner_id=OWNER, at=6.0)
    assert store.set_grant(MODEL, USER, b"p2", owner_id=OWNER, at=7.0) == 2
    assert store.put_request_key(MODEL, USER, b"rk2", at=8.0) == (2, 3)
    assert store.epoch() == 3
    assert store.delete_request_key(MODEL, USER, at=9.0) == 4
    with pytest.raises(NotFound):
        store.delete_request_key(MODEL, USER, at=9.0)


def test_release_records_for_unknown_pairs_are_empty(store: Store) -> None:
    _, (rec,) = store.release_records([("c" * 64, f"{OWNER}/nothing")])
    assert rec.grant is None
    assert rec.model_key is None
    assert rec.request_key is None


def test_audit_is_append_only(store: Store) -> None:
    store.append_audit([AuditEntry(at=9.0, event="release", actor="r" * 64, model_id=MODEL)])
    entries = store.audit()
    assert [e.event for e in entries] == ["register", "register", "release"]
    assert [e.seq for e in entries] == sorted(e.seq for e in entries if e.seq is not None)
    assert store.audit(after=entries[1].seq or 0)[0].event == "release"
    engine = store._require_engine()
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert len(store.audit()) == 3


def test_newer_schema_is_refused(tmp_path: object) -> None:
    s = Store("sqlite+pysqlite:///:memory:").open()
    try:
        with s._require_engine().begin() as conn:
            conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION + 1))
        s._state = StoreState.UNOPENED
        with pytest.raises(SchemaVersionError, match="newer sealserve"):
            s._ensure_schema()
    finally:
        s.close()
