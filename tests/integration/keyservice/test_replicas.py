"""A KeyService on another node joins by attested master-key transfer and serves the same data.

Two simulated nodes: two platform daemons of one (simulated) vendor, the same platform key
(as two machines chain to one hardware root), each with its own sealing root.  The KeyService
on node A creates the master key, sealed to A; the one on node B, launched with ``--join`` A,
cannot unseal it, attests to A and verifies A's evidence, receives the master key HPKE-wrapped
to its fresh key, seals its own copy to B, and is then the same KeyService: the same identity,
the same keys released, also after a restart without A.  A KeyService of another measurement
is refused the master key (the fixed denial), and refuses to take one from a peer of another
measurement.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealserve.attest import Policy, report_data_for
from sealserve.attest.tee import SimulatedPlatform
from sealserve.client import KeyServicePin, Owner, User
from sealserve.config import KeyServiceSettings
from sealserve.crypto import HpkeKeyPair, Identity, RequestKey, SymmetricKey
from sealserve.errors import KeyServiceError
from sealserve.keyservice import measured_config
from sealserve.keyservice._launch import LaunchedKeyService, launch_keyservice
from sealserve.protocol import ReplicaIn, parse_challenge, wire
from tests.integration.keyservice.simruntime import PROBE, SimulatedRuntime


class Node:
    """A simulated machine: its platform daemon (sharing the vendor key) and its data."""

    def __init__(self, root: Path, *, vendor: Path | None = None) -> None:
        self.root = root
        tee = root / "platform" / "tee"
        tee.mkdir(parents=True)
        if vendor is not None:  # the same platform key, another sealing root
            for name in ("platform.key", "platform.pub"):
                shutil.copy2(vendor / name, tee / name)
        self.platform = SimulatedPlatform(data_dir=root / "platform").open()
        self.pub = root / "platform.pub"
        self.pub.write_text(self.platform.public_key_bytes.hex() + "\n")

    @property
    def tee(self) -> Path:
        return self.root / "platform" / "tee"

    def launch(
        self, settings: KeyServiceSettings, *, join: str | None = None
    ) -> LaunchedKeyService:
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            return launch_keyservice(
                self.platform,
                settings,
                data_dir=self.root / "ks",
                platform_key=self.pub,
                log_level="DEBUG",
                join=join,
                stderr=log,
            )
        finally:
            os.close(log)

    @property
    def log(self) -> Path:
        return self.root / "keyservice.log"

    def close(self) -> None:
        self.platform.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    a = Node(tmp_path / "a")
    b = Node(tmp_path / "b", vendor=a.tee)
    try:
        assert (a.tee / "sealing.key").read_bytes() != (b.tee / "sealing.key").read_bytes()
        assert a.platform.public_key_bytes == b.platform.public_key_bytes
        yield a, b
    finally:
        b.close()
        a.close()


def _settings(tmp_path: Path, **changes: object) -> KeyServiceSettings:
    base: dict[str, object] = {
        "port": 0,
        "db_url": f"sqlite+pysqlite:///{tmp_path / 'shared.db'}",
        "rate_limit_per_s": 1e4,
        "rate_limit_burst": 10_000,
    }
    return KeyServiceSettings(**{**base, **changes})  # type: ignore[arg-type]


def _pin(node: Node, service: LaunchedKeyService) -> KeyServicePin:
    return KeyServicePin(
        policy=Policy(measurements=frozenset({service.measurement})),
        trust=node.platform.trust_anchors(),
    )


def _publish(url: str, pin: KeyServicePin, runtime: str) -> tuple[str, str]:
    owner = Owner(Identity.generate(), keyservice_url=url, pin=pin)
    user = User(Identity.generate(), keyservice_url=url, pin=pin)
    policy = Policy(measurements=frozenset({runtime}))
    with owner, user:
        owner.register()
        user.register()
        owner.put_model_key("m", SymmetricKey.generate())
        owner.grant("m", user.principal_id, policy)
        user.put_request_key(owner.model_id("m"), RequestKey.generate(), policy)
        return user.principal_id, owner.model_id("m")


def _released(node: Node, url: str, pin: KeyServicePin, pair: tuple[str, str]) -> bytes:
    runtime = SimulatedRuntime(platform=node.platform, url=url, pin=pin)
    try:
        release = runtime.release([pair])
        return release.keys[pair].model_key.to_bytes()
    finally:
        runtime.close()


def test_a_replica_on_another_node_joins_and_serves_the_same_data(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = nodes
    settings = _settings(tmp_path)
    first = a.launch(settings)
    try:
        pin = _pin(a, first)
        pair = _publish(first.url, pin, a.platform.measurement(PROBE))
        key_from_a = _released(a, first.url, pin, pair)
        # without --join, the node's KeyService cannot open the database at all
        with pytest.raises(KeyServiceError, match="exited before it was ready"):
            b.launch(settings)
        assert "sealed under another key" in b.log.read_text()
        replica = b.launch(settings, join=first.url)
        try:
            # the same measurement, the same identity, the same data
            assert replica.measurement == first.measurement
            assert replica.keyservice_id == first.keyservice_id
            assert _released(b, replica.url, pin, pair) == key_from_a
        finally:
            replica.stop()
    finally:
        first.stop()
    # node B sealed a copy of its own: it restarts without A and without --join
    again = b.launch(settings)
    try:
        assert again.keyservice_id == first.keyservice_id
        assert _released(b, again.url, pin, pair) == key_from_a
    finally:
        again.stop()


def test_a_keyservice_of_another_measurement_gets_no_master_key(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = nodes
    settings = _settings(tmp_path)
    first = a.launch(settings)
    try:
        # another measured setting: another measurement, refused by the running KeyService
        other = _settings(tmp_path, challenge_ttl_s=30.0)
        assert b.platform.measurement("keyservice", config=measured_config(other)) != (
            first.measurement
        )
        with pytest.raises(KeyServiceError, match="exited before it was ready"):
            b.launch(other, join=first.url)
        assert "the peer is not a KeyService of this measurement" in b.log.read_text()
        # the same refusal, asked directly: genuine evidence of other code, the fixed 403
        with httpx.Client(base_url=first.url, timeout=30) as http:
            nonce = parse_challenge(http.post("/v1/challenges").content)
            key = HpkeKeyPair.generate()
            evidence = b.platform.issue_unlaunched_evidence(
                PROBE, report_data_for(wire.replica_binding(key.public_key_bytes()), nonce)
            )
            body = ReplicaIn(
                nonce=nonce,
                evidence=evidence.to_bytes(),
                replica_public_key=key.public_key_bytes(),
            )
            r = http.post("/v1/replicas", content=body.to_json())
            assert r.status_code == 403
            assert r.json() == wire.DENIAL_BODY
            # and a nonce is used once, whatever the outcome
            again = http.post("/v1/replicas", content=body.to_json())
            assert again.status_code == 403
    finally:
        first.stop()


def test_a_replica_refuses_a_peer_of_another_measurement(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    """The host points the new KeyService at a KeyService of its choosing (another build or
    setting, on its own database): the joiner verifies the peer's evidence and refuses."""
    a, b = nodes
    base = _settings(tmp_path)
    genuine = a.launch(base)
    genuine.stop()  # the database now has a master key sealed to node A
    impostor = a.launch(
        _settings(tmp_path, challenge_ttl_s=30.0, db_url=f"sqlite+pysqlite:///{tmp_path / 'i.db'}")
    )
    try:
        with pytest.raises(KeyServiceError, match="exited before it was ready"):
            b.launch(base, join=impostor.url)
        assert "the peer is not a KeyService of this measurement" in b.log.read_text()
    finally:
        impostor.stop()
