"""One local Ray, one sealserve stack and one Ray Serve deployment shared by the module.

The stack is the runtime benchmark's (:class:`sealserve.bench._runtime_stack.LocalStack`): a
simulated TEE platform daemon on a Unix socket, a KeyService it launched, an owner, a user and
a model store.  Ray runs locally (2 CPUs, no dashboard, its session in a short temporary
directory); the ``SealedInstance`` deployment keeps two replicas (each one instance: a host and
a runtime the daemon launched) and routes with FnPacker's ``sesemi`` policy.  Teardown deletes
the app, stops Serve and Ray, closes the stack, and checks that no instance process is left.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.bench._runtime_stack import LocalStack
from sealserve.client import KeyServicePin, User
from sealserve.crypto import Identity, RequestKey
from sealserve.platform import PlatformConfig
from sealserve.platform.ray import RayOptions, RayPlatform, connect, deploy, stop

#: The teardown's bound (the stop kills what is left after it).
STOP_TIMEOUT_S = 60.0


@dataclasses.dataclass
class RayStack:
    stack: LocalStack
    options: RayOptions
    platform: RayPlatform
    users: list[User] = dataclasses.field(default_factory=list)
    keys: dict[tuple[str, str], RequestKey] = dataclasses.field(default_factory=dict)

    def new_user(self) -> User:
        assert self.stack.platform is not None
        pin = KeyServicePin(
            policy=self.stack.keyservice_policy, trust=self.stack.platform.trust_anchors()
        )
        user = User(Identity.generate(), keyservice_url=self.stack.keyservice_url, pin=pin)
        user.open()
        user.register()
        self.users.append(user)
        return user

    def add_model(self, name: str, onnx: bytes, *, grant: list[User]) -> str:
        """Seal, store and key a model (granting the stack's own user), then grant ``grant``."""
        model = self.stack.add_model(name, onnx)
        assert self.stack.owner is not None
        assert self.stack.user is not None
        self.keys[(self.stack.user.principal_id, model.model_id)] = model.request_key
        for user in grant:
            self.stack.owner.grant(name, user.principal_id, self.stack.runtime_policy)
            key = RequestKey.generate()
            user.put_request_key(model.model_id, key, self.stack.runtime_policy)
            self.keys[(user.principal_id, model.model_id)] = key
        return model.model_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def instance_pids(platform: RayPlatform) -> dict[int, str]:
    """The instance hosts and runtimes the router knows of (pid -> what it is)."""
    pids: dict[int, str] = {}
    for inst in platform.stats().instances:
        if inst.pid is not None:
            pids[inst.pid] = f"instance host i{inst.instance_id}"
        if inst.runtime_pid is not None:
            pids[inst.runtime_pid] = f"runtime of i{inst.instance_id}"
    return pids


@pytest.fixture(scope="module")
def ray_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayStack]:
    root = tmp_path_factory.mktemp("ray")
    ray_tmp = Path(tempfile.mkdtemp(prefix="ssray-"))  # short: Ray's socket paths live in it
    stack = LocalStack(root / "stack").open()
    pids: dict[int, str] = {}
    options: RayOptions | None = None
    started = False
    try:
        started = connect(num_cpus=2, temp_dir=ray_tmp, object_store_mb=128)
        options = RayOptions(
            store_dir=stack.store.root,
            keyservice_url=stack.keyservice_url,
            tee_socket=stack.socket_path,
            platform_key_file=stack.platform_key_file,
            keyservice_measurement=stack.keyservice_measurement,
            run_dir=root / "replicas",
            platform=PlatformConfig(
                policy="sesemi", max_instances=2, instance_concurrency=4, keep_alive_s=120.0
            ),
            min_replicas=2,
            replica_num_cpus=0.0,
            instance_log_level="INFO",
            graceful_shutdown_timeout_s=10.0,
        )
        s = RayStack(
            stack=stack, options=options, platform=RayPlatform(deploy(options), options=options)
        )
        yield s
        pids = instance_pids(s.platform)
        for user in s.users:
            user.close()
    finally:
        killed = stop(options, started=started, timeout_s=STOP_TIMEOUT_S, instance_pids=pids)
        stack.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    # The replicas stop their hosts (and the hosts their runtimes) when the app is deleted: an
    # instance process the stop had to kill, or one still alive, is a leak.
    left = [p for p in pids if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"instance processes left behind: {left}"
    assert not set(killed) & set(pids), f"instance processes killed by the stop: {killed}"
