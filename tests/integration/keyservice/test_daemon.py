"""The KeyService launched through a platform daemon (``--tee-socket``), not an embedded one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from sealserve.attest import Policy
from sealserve.attest.tee import PlatformClient, PlatformServer, SimulatedPlatform
from sealserve.client import KeyServicePin, Owner
from sealserve.config import KeyServiceSettings
from sealserve.crypto import Identity, SymmetricKey
from sealserve.errors import KeyServiceError
from sealserve.keyservice._launch import launch_keyservice


def test_launched_through_a_platform_daemon(platform: SimulatedPlatform, tmp_path: Path) -> None:
    pub = tmp_path / "platform.pub"
    pub.write_text(platform.public_key_bytes.hex() + "\n")
    settings = KeyServiceSettings(port=0, db_url=f"sqlite+pysqlite:///{tmp_path / 'ks.db'}")
    with tempfile.TemporaryDirectory(prefix="ks-sock-") as short:  # Unix socket paths are short
        socket_path = Path(short) / "tee.sock"
        with (
            PlatformServer(platform, socket_path=socket_path),
            PlatformClient(socket_path) as client,
        ):
            service = launch_keyservice(
                client, settings, data_dir=tmp_path / "data", platform_key=pub
            )
            try:
                assert service.measurement == platform.measurement("keyservice")
                pin = KeyServicePin(
                    policy=Policy(measurements=frozenset({service.measurement})),
                    trust=platform.trust_anchors(),
                )
                with Owner(Identity.generate(), keyservice_url=service.url, pin=pin) as owner:
                    assert owner.register() is True
                    assert owner.put_model_key("m", SymmetricKey.generate()).version == 1
            finally:
                assert service.stop() == 0


def test_a_platform_key_of_the_hosts_choosing_is_refused(
    platform: SimulatedPlatform, tmp_path: Path
) -> None:
    """The host names the platform key the KeyService trusts (an argument, not measured):
    naming one of its own would let it sign runtime evidence. The KeyService trusts only the
    platform that launched it, and refuses to start with another one."""
    hosts_own = tmp_path / "hosts-own.pub"
    hosts_own.write_text(Identity.generate().public_key_bytes.hex() + "\n")
    settings = KeyServiceSettings(port=0, db_url=f"sqlite+pysqlite:///{tmp_path / 'ks.db'}")
    stderr_path = tmp_path / "keyservice.err"
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT, 0o600)
    with tempfile.TemporaryDirectory(prefix="ks-sock-") as short:
        socket_path = Path(short) / "tee.sock"
        with (
            PlatformServer(platform, socket_path=socket_path),
            PlatformClient(socket_path) as client,
        ):
            try:
                with pytest.raises(KeyServiceError, match="exited before it was ready"):
                    launch_keyservice(
                        client,
                        settings,
                        data_dir=tmp_path / "data",
                        platform_key=hosts_own,
                        stderr=fd,
                    )
            finally:
                os.close(fd)
    assert "other than the one that launched it" in stderr_path.read_text()
