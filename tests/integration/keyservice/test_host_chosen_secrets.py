"""Issue 10.1: the untrusted host launches the genuine KeyService with secrets of its choosing.

Before the fix, the host passed ``--master-key-file`` or ``SEALSERVE_KEYSERVICE_MASTER_KEY``
to the measured ``keyservice`` entry; the measurement was the one clients pin, a client
attested it and uploaded a model key, and the host decrypted that key from the database with
the master key it had chosen.  Now the master key is born inside the KeyService and kept sealed
under its sealing key: the argument is refused, the variable never reaches the process, the
host's key opens nothing, and a KeyService re-created with new secrets is refused by clients
that met the old one.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from sealserve.attest.tee import SimulatedPlatform
from sealserve.client import KeyServicePin, Owner
from sealserve.crypto import Identity, SymmetricKey
from sealserve.errors import KeyServiceChanged, KeyServiceError
from sealserve.keyservice import Vault, measured_config
from sealserve.keyservice._launch import read_ready_line
from sealserve.keyservice._schema import keyservice_state, model_keys
from tests.integration.keyservice.conftest import KeyServiceProcess


class HostileLaunch(KeyServiceProcess):
    """The genuine KeyService entry, launched with extra arguments and variables of the
    host's choosing."""

    def __init__(self, *a: object, extra_args: list[str], env: dict[str, str], **kw: object):
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.extra_args = extra_args
        self.env = env

    def args(self) -> list[str]:
        return [*super().args(), *self.extra_args]

    def start(self) -> KeyServiceProcess:
        read_fd, write_fd = os.pipe()
        stderr = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = self.platform.launch(
                "keyservice",
                args=self.args(),
                env=self.env,
                config=measured_config(self.settings),
                stdout=write_fd,
                stderr=stderr,
            )
        finally:
            os.close(write_fd)
            os.close(stderr)
        try:
            ready = read_ready_line(read_fd, self.process, 60.0)
        finally:
            os.close(read_fd)
        if ready is None:
            code = self.process.wait(10)
            self.process.close()
            self.process = None
            raise KeyServiceError(f"the KeyService did not start (status {code})")
        self.url = ready["url"]
        return self


def _sealed_model_key(db_url: str) -> bytes:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return bytes(conn.execute(sa.select(model_keys.c.sealed)).scalar_one())
    finally:
        engine.dispose()


def test_a_host_chosen_master_key_opens_nothing(
    platform: SimulatedPlatform, backend: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    chosen = SymmetricKey.generate()
    chosen_file = tmp_path / "chosen.key"
    chosen_file.write_bytes(chosen.to_bytes())
    chosen_file.chmod(0o600)
    encoded = base64.urlsafe_b64encode(chosen.to_bytes()).decode().rstrip("=")

    # The argument is gone: the genuine entry refuses to start with it.
    with pytest.raises(KeyServiceError, match="did not start"):
        HostileLaunch(
            platform,
            data_dir=data_dir,
            db_url=backend,
            extra_args=["--master-key-file", str(chosen_file)],
            env={},
        ).start()

    # The variable is dropped by the platform: the KeyService starts with its own secrets.
    ks = HostileLaunch(
        platform,
        data_dir=data_dir,
        db_url=backend,
        extra_args=[],
        env={"SEALSERVE_KEYSERVICE_MASTER_KEY": encoded, "HOME": str(tmp_path)},
    ).start()
    try:
        # A client attests it (the measurement it pins is the genuine one) and uploads a key.
        model_key = SymmetricKey.generate()
        with Owner(Identity.generate(), keyservice_url=ks.url, pin=ks.pin()) as owner:
            owner.register()
            owner.put_model_key("resnet50", model_key)
            mid = owner.model_id("resnet50")
    finally:
        ks.stop()

    # The host reads the database and tries its chosen master key: the record does not open.
    sealed = _sealed_model_key(backend)
    assert model_key.to_bytes() not in sealed
    with pytest.raises(KeyServiceError, match="does not unseal"):
        Vault(chosen).unseal("model-key", {"model_id": mid, "version": "1"}, sealed)
    # Nor is the chosen key what the database's sealed master key holds.
    engine = sa.create_engine(backend)
    try:
        with engine.connect() as conn:
            blob = bytes(
                conn.execute(
                    sa.select(keyservice_state.c.sealed).where(
                        keyservice_state.c.name == "master-key"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()
    assert chosen.to_bytes() not in blob


def test_a_recreated_keyservice_is_refused_by_clients_that_met_the_old_one(
    platform: SimulatedPlatform, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    known = tmp_path / "client" / "known-keyservices.json"
    first_db = f"sqlite+pysqlite:///{tmp_path / 'first.db'}"
    ks = KeyServiceProcess(platform, data_dir=data_dir, db_url=first_db).start()
    url = ks.url
    try:
        pin = KeyServicePin(policy=ks.pin().policy, trust=ks.pin().trust, known_keyservices=known)
        with Owner(Identity.generate(), keyservice_url=url, pin=pin) as owner:
            owner.register()
            first_id = owner.keyservice.keyservice.keyservice_id
        # The same KeyService after a restart keeps its identity (its master key is sealed).
        ks.stop()
        ks.start()
        with Owner(Identity.generate(), keyservice_url=ks.url, pin=pin) as owner:
            assert owner.keyservice.keyservice.keyservice_id == first_id
    finally:
        ks.stop()
    # The host re-creates it on a fresh database (new secrets) at the same address: same code,
    # same measurement, valid evidence, but other long-term keys.
    pin = KeyServicePin(policy=ks.pin().policy, trust=ks.pin().trust, known_keyservices=known)
    recreated = KeyServiceProcess(
        platform, data_dir=data_dir, db_url=f"sqlite+pysqlite:///{tmp_path / 'second.db'}"
    ).start()
    try:
        doc = known.read_text().replace(url, recreated.url)  # pretend the address is the same
        known.write_text(doc)
        with pytest.raises(KeyServiceChanged, match="long-term keys changed"):
            Owner(Identity.generate(), keyservice_url=recreated.url, pin=pin).open()
        # A configured id refuses it as well.
        configured = KeyServicePin(policy=pin.policy, trust=pin.trust, keyservice_id=first_id)
        with pytest.raises(KeyServiceChanged, match="configured"):
            Owner(Identity.generate(), keyservice_url=recreated.url, pin=configured).open()
    finally:
        recreated.stop()
