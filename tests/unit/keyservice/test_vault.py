"""The master key is born inside the KeyService and kept sealed under its sealing key."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from sealserve.errors import ConfigError, SealedStateError
from sealserve.keyservice import Store, Vault, open_master_key
from sealserve.keyservice._audit import AuditChain
from sealserve.keyservice._vault import master_key_fingerprint

OWNER = "a" * 64
MODEL = f"{OWNER}/resnet"


def _url(tmp_path: Path) -> str:
    return f"sqlite+pysqlite:///{tmp_path / 'ks.db'}"


def test_the_first_start_generates_and_seals_the_master_key(tmp_path: Path) -> None:
    sealing = secrets.token_bytes(32)
    with Store(_url(tmp_path)) as store:
        first = open_master_key(store, sealing, now=1.0)
        sealed = store.get_state("master-key")
        assert sealed is not None
        # what the database holds is not the key itself
        assert first.to_bytes() not in sealed
        # every later start (or another process with the same sealing key) unseals the same
        assert open_master_key(store, sealing, now=2.0) == first
    with Store(_url(tmp_path)) as store:
        assert open_master_key(store, sealing, now=3.0) == first
    assert Vault(first).derive("signing") == Vault(first).derive("signing")


def test_another_sealing_key_refuses_to_start(tmp_path: Path) -> None:
    with Store(_url(tmp_path)) as store:
        open_master_key(store, secrets.token_bytes(32), now=1.0)
        before = store.get_state("master-key")
        with pytest.raises(SealedStateError, match="sealed under another key"):
            open_master_key(store, secrets.token_bytes(32), now=2.0)
        # refused, never replaced
        assert store.get_state("master-key") == before


def test_sealed_records_without_a_master_key_refuse_to_start(tmp_path: Path) -> None:
    with Store(_url(tmp_path)) as store:
        store.attach_audit_chain(AuditChain(b"k" * 32))
        store.add_principal(OWNER, b"o" * 32, "owner", at=1.0)
        store.put_model_key(MODEL, OWNER, 1, b"sealed under a lost key", at=1.0)
        with pytest.raises(SealedStateError, match="no sealed master key"):
            open_master_key(store, secrets.token_bytes(32), now=2.0)
        assert store.get_state("master-key") is None


def test_a_tampered_sealed_master_key_refuses_to_start(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from sealserve.keyservice._schema import keyservice_state

    sealing = secrets.token_bytes(32)
    with Store(_url(tmp_path)) as store:
        open_master_key(store, sealing, now=1.0)
        sealed = bytearray(store.get_state("master-key") or b"")
        sealed[-1] ^= 1
        with store._require_engine().begin() as conn:
            conn.execute(sa.update(keyservice_state).values(sealed=bytes(sealed)))
        with pytest.raises(SealedStateError):
            open_master_key(store, sealing, now=2.0)


@pytest.mark.parametrize(
    "name", ["SEALSERVE_KEYSERVICE_MASTER_KEY", "SEALSERVE_KEYSERVICE_MASTER_KEY_FILE"]
)
def test_the_old_master_key_variables_are_refused(name: str) -> None:
    from sealserve.config import load_settings

    with pytest.raises(ConfigError, match="no longer takes its master key"):
        load_settings(env={name: "x"})


def test_master_key_file_is_no_setting(tmp_path: Path) -> None:
    from sealserve.config import load_settings

    config = tmp_path / "c.toml"
    config.write_text('[keyservice]\nmaster_key_file = "/tmp/chosen.key"\n')
    with pytest.raises(ConfigError, match="not a known setting"):
        load_settings(config, env={})


# -- replicas on other nodes: the master key obtained from a running peer ----------------------


def test_a_replica_joins_and_then_unseals_its_own_copy(tmp_path: Path) -> None:
    here, there = secrets.token_bytes(32), secrets.token_bytes(32)
    with Store(_url(tmp_path)) as store:
        first = open_master_key(store, here, now=1.0)
        calls: list[int] = []

        def join() -> bytes:
            calls.append(1)
            return first.to_bytes()

        assert open_master_key(store, there, now=2.0, join=join) == first
        # the replica sealed a copy of its own, under its sealing key, beside the creator's
        assert store.get_state("master-key") is not None
        assert open_master_key(store, there, now=3.0, join=join) == first
        assert open_master_key(store, there, now=4.0) == first
        assert calls == [1]  # the later starts unsealed the copy without asking the peer
        # the creator's copy is untouched
        assert open_master_key(store, here, now=5.0) == first


def test_a_node_without_a_sealing_key_joins_every_time_and_stores_nothing(tmp_path: Path) -> None:
    with Store(_url(tmp_path)) as store:
        first = open_master_key(store, secrets.token_bytes(32), now=1.0)
        before = store.get_state("master-key")
        assert open_master_key(store, None, now=2.0, join=first.to_bytes) == first
        assert store.get_state("master-key") == before
        with pytest.raises(SealedStateError, match="sealed under another key"):
            open_master_key(store, None, now=3.0)


def test_a_peer_key_of_another_database_is_refused(tmp_path: Path) -> None:
    with Store(_url(tmp_path)) as store:
        open_master_key(store, secrets.token_bytes(32), now=1.0)
        from sealserve.crypto import SymmetricKey

        stranger = SymmetricKey.generate().to_bytes()
        with pytest.raises(SealedStateError, match="not this database's"):
            open_master_key(store, secrets.token_bytes(32), now=2.0, join=lambda: stranger)


def test_joining_a_database_that_has_no_master_key_yet_is_refused(tmp_path: Path) -> None:
    from sealserve.crypto import SymmetricKey

    key = SymmetricKey.generate().to_bytes()
    with Store(_url(tmp_path)) as store:
        with pytest.raises(SealedStateError, match="no master key yet"):
            open_master_key(store, secrets.token_bytes(32), now=1.0, join=lambda: key)
        with pytest.raises(SealedStateError, match="no sealing key"):
            open_master_key(store, None, now=1.0)
        assert store.get_state("master-key") is None


def test_a_tampered_fingerprint_refuses_to_start(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from sealserve.keyservice._schema import keyservice_state

    sealing = secrets.token_bytes(32)
    with Store(_url(tmp_path)) as store:
        key = open_master_key(store, sealing, now=1.0)
        assert store.get_state("master-key-id") == master_key_fingerprint(key)
        with store._require_engine().begin() as conn:
            conn.execute(
                sa.update(keyservice_state)
                .where(keyservice_state.c.name == "master-key-id")
                .values(sealed=bytes(16))
            )
        with pytest.raises(SealedStateError, match="tampered"):
            open_master_key(store, sealing, now=2.0)
