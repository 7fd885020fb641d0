"""At rest: a copy of the database reveals no key; a newer schema refuses to start."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from sealserve.attest import Policy
from sealserve.client import Owner, User
from sealserve.crypto import Identity, RequestKey, SymmetricKey
from sealserve.keyservice._schema import SCHEMA_VERSION, schema_version
from tests.integration.keyservice.conftest import REQUIRE_POSTGRES_ENV, KeyServiceProcess
from tests.integration.keyservice.simruntime import SimulatedRuntime, probe_measurement

PG_DUMP_ENV = "SEALSERVE_TEST_PG_DUMP"


def _forms(secret: bytes) -> list[bytes]:
    """The ways a key could appear in a dump: raw, hex, base64 and base64url."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def _dump(ks: KeyServiceProcess) -> bytes:
    url = sa.engine.make_url(ks.db_url)
    if url.get_backend_name() == "sqlite":
        db = Path(str(url.database))
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-journal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    pg_dump = os.environ.get(PG_DUMP_ENV)
    if not pg_dump:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {PG_DUMP_ENV} is not set")
        pytest.skip(f"{PG_DUMP_ENV} is not set (scripts/with-postgres sets it)")
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(
        [pg_dump, "--data-only", "--inserts", conninfo],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout


def test_a_copy_of_the_database_reveals_no_key(ks: KeyServiceProcess) -> None:
    probe = Policy(measurements=frozenset({probe_measurement(ks.platform)}))
    model_key, request_key = SymmetricKey.generate(), RequestKey.generate()
    owner = Owner(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    user = User(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    with owner, user:
        owner.register()
        user.register()
        mid = owner.model_id("secret-model")
        owner.put_model_key("secret-model", model_key)
        owner.grant("secret-model", user.principal_id, probe)
        user.put_request_key(mid, request_key, probe)
    runtime = SimulatedRuntime(ks)
    try:
        assert runtime.release([(user.principal_id, mid)]).keys
    finally:
        runtime.close()
    ks.stop()
    dump = _dump(ks)
    assert mid.encode() in dump  # the dump is real: ids are there in the clear
    for secret in (model_key.to_bytes(), request_key.to_bytes()):
        for form in _forms(secret):
            assert form not in dump


def test_a_newer_schema_refuses_to_start(ks: KeyServiceProcess) -> None:
    ks.stop()
    engine = sa.create_engine(ks.db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION + 1))
    finally:
        engine.dispose()
    with pytest.raises(AssertionError, match="newer sealserve"):
        ks.start()
