"""The KeyService launched through a platform daemon (``--tee-socket``), not an embedded one."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sealserve.attest import PlatformClient, PlatformServer, Policy, SimulatedPlatform
from sealserve.client import KeyServicePin, Owner
from sealserve.config import KeyServiceSettings
from sealserve.crypto import Identity, SymmetricKey
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
