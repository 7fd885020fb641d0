"""A real deployment (what ``sealserve up`` runs) with an owner, users and models.

The deployment is :class:`sealserve.deploy.LocalDeployment` served from a background thread:
the TEE platform daemon and the KeyService are real processes, instances are real host +
runtime process pairs started on demand, and every request goes through the gateway over
loopback HTTP.  Every pin is asked of the daemon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attest import Policy, TrustAnchors
from sealserve.client import KeyServicePin, Owner, User, upload_model
from sealserve.config import Settings
from sealserve.crypto import Identity, RequestKey
from sealserve.deploy import DeploymentOptions, LocalDeployment
from sealserve.platform import PlatformConfig


@dataclasses.dataclass
class Stack:
    """The deployment and the principals and models the tests use."""

    deployment: LocalDeployment
    owner: Owner
    pin: KeyServicePin
    runtime_policy: Policy
    users: list[User] = dataclasses.field(default_factory=list)
    keys: dict[tuple[str, str], RequestKey] = dataclasses.field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return self.deployment.info.gateway_url

    def new_user(self) -> User:
        info = self.deployment.info
        user = User(
            Identity.generate(),
            keyservice_url=info.keyservice_url,
            pin=self.pin,
            ca_bundle=info.ca_bundle or None,
        )
        user.open()
        user.register()
        self.users.append(user)
        return user

    def add_model(self, name: str, onnx: bytes, tmp: Path, *, grant: list[User]) -> str:
        """Upload a model and grant ``grant``, each with a request key; its model id."""
        path = tmp / f"{name}.onnx"
        path.write_bytes(onnx)
        receipt = upload_model(self.owner, self.deployment.store, name, path)
        for user in grant:
            self.owner.grant(name, user.principal_id, self.runtime_policy)
            key = RequestKey.generate()
            user.put_request_key(receipt.model_id, key, self.runtime_policy)
            self.keys[(user.principal_id, receipt.model_id)] = key
        return receipt.model_id

    def key(self, user: User, model_id: str) -> RequestKey:
        return self.keys[(user.principal_id, model_id)]


def open_stack(
    root: Path,
    config: PlatformConfig,
    *,
    settings: Settings | None = None,
    local_tls: bool = False,
) -> Stack:
    deployment = LocalDeployment(
        DeploymentOptions(
            data_dir=root / "data",
            settings=settings or Settings(),
            platform=config,
            keyservice_port=0,
            gateway_port=0,
            log_level="INFO",
            instance_log_level="INFO",
            local_tls=local_tls,
        )
    ).start()
    try:
        info = deployment.info
        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({info.keyservice_measurement})),
            trust=TrustAnchors.from_data_dir(Path(info.data_dir)),
        )
        owner = Owner(
            Identity.generate(),
            keyservice_url=info.keyservice_url,
            pin=pin,
            ca_bundle=info.ca_bundle or None,
        )
        owner.open()
        owner.register()
    except BaseException:
        deployment.close()
        raise
    return Stack(
        deployment=deployment,
        owner=owner,
        pin=pin,
        runtime_policy=Policy(measurements=frozenset({info.runtime_measurement})),
    )


def close_stack(stack: Stack) -> None:
    for user in stack.users:
        user.close()
    stack.owner.close()
    stack.deployment.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two instances at most, two requests each at once: packing has to happen."""
    config = PlatformConfig(max_instances=2, instance_concurrency=2, keep_alive_s=120.0)
    s = open_stack(tmp_path_factory.mktemp("e2e"), config)
    try:
        yield s
    finally:
        close_stack(s)
