"""The store: schema versioning, versions, grants, the epoch and the append-only audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sealserve import ResourceState, ResourceStateError
from sealserve.errors import (
    Conflict,
    NotFound,
    SchemaVersionError,
)
from sealserve.keyservice._audit import AuditChain
from sealserve.keyservice._schema import (
    SCHEMA_VERSION,
    access_changes,
    keyservice_state,
    schema_version,
    used_nonces,
)
from sealserve.keyservice._store import AuditEntry, Claim, Store

OWNER = "a" * 64
USER = "b" * 64
MODEL = f"{OWNER}/resnet"


CHAIN_KEY = b"k" * 32


def chained(store: Store) -> Store:
    """``store`` with an audit chain attached (the KeyService attaches its own)."""
    store.attach_audit_chain(AuditChain(CHAIN_KEY))
    return store


@pytest.fixture
def store() -> Iterator[Store]:
    with Store("sqlite+pysqlite:///:memory:") as s:
        chained(s)
        s.add_principal(OWNER, b"o" * 32, "owner", at=1.0)
        s.add_principal(USER, b"u" * 32, "user", at=1.0)
        yield s


def test_states_and_use_after_close() -> None:
    s = Store("sqlite+pysqlite:///:memory:")
    assert s.state is ResourceState.UNOPENED
    with pytest.raises(ResourceStateError, match="open it first"):
        s.epoch()
    s.open()
    assert s.state is ResourceState.OPENED
    assert s.epoch() == 0
    s.close()
    assert s.state is ResourceState.CLOSED
    with pytest.raises(ResourceStateError, match="closed"):
        s.epoch()
    with pytest.raises(ResourceStateError, match="only once"):
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
    # every epoch records what it changed, in the same transaction
    changes = store.changes_since(0)
    assert changes.complete
    assert changes.epoch == 4
    assert [(c.epoch, c.model_id, c.user_id) for c in changes.changes] == [
        (e, MODEL, USER) for e in (1, 2, 3, 4)
    ]
    assert [c.epoch for c in store.changes_since(2).changes] == [3, 4]
    assert store.changes_since(4) == store.changes_since(9)  # nothing after the epoch
    assert store.changes_since(4).changes == ()
    store.put_model_key(MODEL, OWNER, 2, b"k2", at=10.0)  # a rotation: every user
    (rotated,) = store.changes_since(4).changes
    assert (rotated.epoch, rotated.model_id, rotated.user_id) == (5, MODEL, None)
    many = store.changes_since(0, limit=3)
    assert (many.epoch, many.changes, many.complete) == (5, (), False)


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
        with pytest.raises(SchemaVersionError, match="newer sealserve"):
            s._ensure_schema()
    finally:
        s.close()


def _release_entry(actor: str) -> AuditEntry:
    return AuditEntry(at=9.0, event="release", actor=actor, model_id=MODEL, user_id=USER)


def test_a_claimed_nonce_is_used_once_with_its_audit_rows(store: Store) -> None:
    first = Claim(nonce=b"n1", expires_at=100.0, entries=(_release_entry("r1"),))
    replay = Claim(nonce=b"n1", expires_at=100.0, entries=(_release_entry("r2"),))
    other = Claim(nonce=b"n2", expires_at=100.0, entries=(_release_entry("r3"),))
    assert store.commit_claims([first, replay, other]) == [True, False, True]
    assert store.commit_claims([replay]) == [False]
    assert store.claim_nonce(b"n3", expires_at=100.0) is True
    assert store.claim_nonce(b"n3", expires_at=100.0) is False
    actors = [e.actor for e in store.audit() if e.event == "release"]
    assert actors == ["r1", "r3"]  # the replay's rows were never written


def test_expired_nonces_are_purged(store: Store) -> None:
    store.commit_claims(
        [Claim(nonce=b"old", expires_at=10.0), Claim(nonce=b"new", expires_at=50.0)]
    )
    assert store.commit_claims([], purge_before=20.0) == []
    assert store.claim_nonce(b"old", expires_at=60.0) is True  # its row was purged
    assert store.claim_nonce(b"new", expires_at=60.0) is False


def test_two_stores_on_one_file_share_single_use(tmp_path: Path) -> None:
    url = f"sqlite+pysqlite:///{tmp_path / 'ks.db'}"
    with Store(url) as first, Store(url) as second:
        chained(first)
        assert first.claim_nonce(b"n", expires_at=100.0) is True
        assert second.claim_nonce(b"n", expires_at=100.0) is False
        first.add_principal(OWNER, b"o" * 32, "owner", at=1.0)
        first.put_model_key(MODEL, OWNER, 1, b"k1", at=1.0)
        _, (rec,) = second.release_records([(USER, MODEL)])
        assert rec.model_key == b"k1"


def test_schema_version_1_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite+pysqlite:///{tmp_path / 'ks.db'}"
    # make it look like a version-1 database
    with Store(url) as s, s._require_engine().begin() as conn:
        used_nonces.drop(conn)
        keyservice_state.drop(conn)
        access_changes.drop(conn)
        for column in ("digest", "chain", "mac"):
            conn.exec_driver_sql(f"ALTER TABLE audit_log DROP COLUMN {column}")
        conn.execute(sa.update(schema_version).values(version=1))
    with Store(url) as s:
        assert s.claim_nonce(b"n", expires_at=1.0) is True
        assert s.get_state("master-key") is None
        assert s.changes_since(0).complete
        chained(s).add_principal(OWNER, b"o" * 32, "owner", at=1.0)
        with s._require_engine().connect() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == 5


def test_sealed_state_is_stored_once(tmp_path: Path) -> None:
    url = f"sqlite+pysqlite:///{tmp_path / 'ks.db'}"
    with Store(url) as first, Store(url) as second:
        chained(first)
        assert first.holds_sealed_records() is False
        assert first.put_state_once("master-key", b"first", at=1.0) == b"first"
        # a second process that lost the race gets the blob the first one stored
        assert second.put_state_once("master-key", b"second", at=2.0) == b"first"
        assert second.get_state("master-key") == b"first"
        first.add_principal(OWNER, b"o" * 32, "owner", at=1.0)
        first.put_model_key(MODEL, OWNER, 1, b"k1", at=1.0)
        assert second.holds_sealed_records() is True
