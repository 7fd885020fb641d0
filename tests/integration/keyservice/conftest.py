"""A real KeyService, launched through a real simulated platform, on SQLite or PostgreSQL.

Every test that takes ``ks`` runs twice: against a SQLite file and against the PostgreSQL
server named by ``SEALSERVE_TEST_POSTGRES_URL`` (``scripts/with-postgres`` provides one).
Without that variable the PostgreSQL run skips with a reason, unless
``SEALSERVE_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), in which case it fails.

The KeyService and the clients pin the measurement of the platform's own code snapshot, so
that files edited while the tests run cannot make the pin and the launched code disagree.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sealserve.attest import Policy
from sealserve.attest.tee import SimulatedPlatform
from sealserve.client import KeyServicePin
from sealserve.config import KeyServiceSettings
from sealserve.keyservice import measured_config
from sealserve.keyservice._launch import read_ready_line
from sealserve.keyservice._measured import limit_args

POSTGRES_ENV = "SEALSERVE_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "SEALSERVE_REQUIRE_POSTGRES"
_READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedPlatform]:
    with SimulatedPlatform(data_dir=tmp_path_factory.mktemp("platform")) as p:
        yield p


def postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
        pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_ENV} is not set")
    pytest.skip(f"no PostgreSQL: set {POSTGRES_ENV} (scripts/with-postgres sets it)")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    import psycopg
    import sqlalchemy as sa

    admin = sa.engine.make_url(postgres_admin_url())
    name = "ks_" + secrets.token_hex(6)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class KeyServiceProcess:
    """One KeyService launched through ``platform``; ``start``/``stop`` as often as needed."""

    def __init__(
        self,
        platform: SimulatedPlatform,
        *,
        data_dir: Path,
        db_url: str,
        settings: KeyServiceSettings | None = None,
    ) -> None:
        self.platform = platform
        self.data_dir = data_dir
        self.db_url = db_url
        self.settings = settings or KeyServiceSettings()
        self.process: Any = None
        self.url = ""
        self.stderr_path = data_dir / "keyservice.stderr"

    @property
    def measurement(self) -> str:
        return self.platform.measurement("keyservice", config=measured_config(self.settings))

    def pin(self) -> KeyServicePin:
        return KeyServicePin(
            policy=Policy(measurements=frozenset({self.measurement})),
            trust=self.platform.trust_anchors(),
        )

    def args(self) -> list[str]:
        pub = self.platform.public_key_bytes.hex()
        key_file = self.data_dir / "platform.pub"
        key_file.write_text(pub + "\n")
        s = self.settings
        return [
            "--data-dir", str(self.data_dir),
            "--db", self.db_url,
            "--host", "127.0.0.1",
            "--port", "0",
            "--platform-key", str(key_file),
            "--max-body-bytes", str(s.max_body_bytes),
            "--rate-limit-per-s", repr(float(s.rate_limit_per_s)),
            "--rate-limit-burst", str(s.rate_limit_burst),
            "--log-level", "DEBUG",
            *limit_args(s),
        ]  # fmt: skip

    def start(self) -> KeyServiceProcess:
        read_fd, write_fd = os.pipe()
        stderr = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = self.platform.launch(
                "keyservice",
                args=self.args(),
                config=measured_config(self.settings),
                stdout=write_fd,
                stderr=stderr,
            )
        finally:
            os.close(write_fd)
            os.close(stderr)
        try:
            ready = read_ready_line(read_fd, self.process, _READY_TIMEOUT_S)
        finally:
            os.close(read_fd)
        if ready is None:
            self.process.close()
            raise AssertionError(
                f"the KeyService did not start:\n{self.stderr_path.read_text()[-3000:]}"
            )
        self.url = ready["url"]
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(20)
        self.process.close()
        self.process = None
        return code

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=20)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL of each backend."""
    if request.param == "sqlite":
        yield f"sqlite+pysqlite:///{tmp_path / 'keyservice.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture
def ks(platform: SimulatedPlatform, backend: str, tmp_path: Path) -> Iterator[KeyServiceProcess]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    service = KeyServiceProcess(platform, data_dir=data_dir, db_url=backend).start()
    try:
        yield service
    finally:
        service.stop()
