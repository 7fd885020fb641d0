"""Several KeyService processes, one database: one attested identity, single use across all.

Two processes launched separately on their own ports play two machines behind a load balancer
(the runtime attests one and talks to the other); ``workers=2`` plays one machine whose
processes share a port.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealserve.attest import Policy
from sealserve.attest.tee import SimulatedPlatform
from sealserve.client import Owner, User
from sealserve.config import KeyServiceSettings
from sealserve.crypto import HpkeKeyPair, Identity, RequestKey, SymmetricKey, sign_request
from sealserve.errors import AccessDenied
from sealserve.keyservice import launch_keyservice
from sealserve.protocol import wire
from tests.integration.keyservice.conftest import KeyServiceProcess
from tests.integration.keyservice.simruntime import SimulatedRuntime, probe_measurement

DENIAL = wire.canonical_json(wire.DENIAL_BODY)


@pytest.fixture
def pair(
    platform: SimulatedPlatform, backend: str, tmp_path: Path
) -> Iterator[tuple[KeyServiceProcess, KeyServiceProcess]]:
    """Two KeyService processes on one database and one data directory (one master key)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first = KeyServiceProcess(platform, data_dir=data_dir, db_url=backend).start()
    try:
        second = KeyServiceProcess(platform, data_dir=data_dir, db_url=backend).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_runtime_attests_one_process_and_releases_at_another(
    pair: tuple[KeyServiceProcess, KeyServiceProcess],
) -> None:
    first, second = pair
    probe = Policy(measurements=frozenset({probe_measurement(first.platform)}))
    owner = Owner(Identity.generate(), keyservice_url=first.url, pin=first.pin())
    user = User(Identity.generate(), keyservice_url=second.url, pin=second.pin())
    with owner, user:
        owner.register()
        user.register()
        mid = owner.model_id("shared")
        owner.put_model_key("shared", SymmetricKey.generate())
        owner.grant("shared", user.principal_id, probe)
        user.put_request_key(mid, RequestKey.generate(), probe)  # wrapped to second's key
        pairs = [(user.principal_id, mid)]

        runtime = SimulatedRuntime(first)  # attests the first process
        try:
            with second.http() as other:
                # the challenge from the first, the release at the second
                nonce = parse(runtime.http.post("/v1/challenges"))
                body = runtime.session.request_body(
                    nonce=nonce,
                    evidence=runtime.evidence(runtime.session.report_data(nonce)),
                    pairs=pairs,
                )
                r = other.post("/v1/releases", content=body)
                assert r.status_code == 200, r.text
                assert runtime.session.open(r.content, nonce=nonce).keys  # signed as attested
                for target in (other, runtime.http):  # the same nonce again, at either
                    again = target.post("/v1/releases", content=body)
                    assert (again.status_code, again.content) == (403, DENIAL)
                # a signed request accepted by one process is a replay at the other
                path = f"/v1/models/{mid}"
                headers = sign_request(owner.identity, method="GET", path=path, body=b"")
                assert runtime.http.get(path, headers=headers).status_code == 200
                replay = other.get(path, headers=headers)
                assert (replay.status_code, replay.content) == (403, DENIAL)
            # a revoke at one process holds at the other for the next release
            owner.revoke("shared", user.principal_id)
            with pytest.raises(AccessDenied):
                runtime.release(pairs)
        finally:
            runtime.close()


def parse(response: httpx.Response) -> bytes:
    assert response.status_code == 201, response.text
    return wire.b64decode(response.json()["nonce"])


def test_workers_share_one_port(platform: SimulatedPlatform, tmp_path: Path) -> None:
    key_file = tmp_path / "platform.pub"
    key_file.write_text(platform.public_key_bytes.hex() + "\n")
    settings = KeyServiceSettings(
        port=0, db_url=f"sqlite+pysqlite:///{tmp_path / 'ks.db'}", rate_limit_per_s=10_000.0
    )
    service = launch_keyservice(
        platform, settings, data_dir=tmp_path / "data", platform_key=key_file, workers=2
    )
    try:
        assert len(service.processes) == 2
        assert len({p.pid for p in service.processes}) == 2
        for process in service.processes:  # each one launched, measured and attested
            assert process.measurement == service.measurement
        before = [_sockets(p.pid) for p in service.processes]
        # fresh connections spread over both (by a hash of their ports; 24 all landing on
        # one of two processes has odds of 2**-23)
        clients = [httpx.Client(base_url=service.url, timeout=20) for _ in range(24)]
        try:
            for client in clients:
                assert client.post("/v1/challenges").status_code == 201
            after = [_sockets(p.pid) for p in service.processes]
            assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
            runtime_key = HpkeKeyPair.generate().public_key_bytes()
            nonce = parse(clients[0].post("/v1/challenges"))
            body = wire.canonical_json(
                {
                    "nonce": wire.b64encode(nonce),
                    "evidence": "AAAA",
                    "runtime_public_key": wire.b64encode(runtime_key),
                    "pairs": [{"user_id": "a" * 64, "model_id": "b" * 64 + "/m"}],
                }
            )
            for client in clients:  # every process refuses the same way
                r = client.post("/v1/releases", content=body)
                assert (r.status_code, r.content) == (403, DENIAL)
        finally:
            for client in clients:
                client.close()
    finally:
        assert service.stop() == 0


def _sockets(pid: int) -> int:
    """How many sockets the process holds (Linux: its descriptors that are sockets)."""
    folder = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(folder):
        try:
            count += os.readlink(f"{folder}/{name}").startswith("socket:")
        except OSError:
            continue
    return count
