"""The stop path on Ray cannot hang: a stopped Serve controller and a stopped instance host.

The hang seen before: ``serve.shutdown()`` waited forever for a Serve controller that did not
answer (a busy machine), and the fixture's teardown (and ``sealserve platform ray serve``'s
Ctrl-C) with it.  Here the controller and the instance host are stopped with SIGSTOP, which
no request can wake, and :func:`sealserve.platform.ray.stop` still returns within its bound:
what did not stop is killed and named in the log, no Ray or instance process is left, and this
process has left Ray (the next module starts its own).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealserve._stopping import descendants, describe, wait_gone
from sealserve.bench._runtime_stack import LocalStack
from sealserve.platform import PlatformConfig
from sealserve.platform.ray import RayOptions, RayPlatform, connect, deploy, stop
from sealserve.protocol import new_request_id, seal_input
from tests.integration.ray.conftest import instance_pids
from tests.unit.runtime.graphs import dense_model

pytestmark = pytest.mark.integration

_BOUND_S = 20.0
#: Scheduling slack on a loaded machine (the bound is the stop's; the kill adds a little).
_SLACK_S = 10.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(240)
def test_the_stop_is_bounded_when_the_serve_controller_and_a_host_are_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    ray_tmp = Path(tempfile.mkdtemp(prefix="ssray-"))
    stack = LocalStack(tmp_path / "stack").open()
    stopped: list[int] = []
    try:
        started = connect(num_cpus=2, temp_dir=ray_tmp, object_store_mb=128)
        assert started
        options = RayOptions(
            store_dir=stack.store.root,
            keyservice_url=stack.keyservice_url,
            tee_socket=stack.socket_path,
            platform_key_file=stack.platform_key_file,
            keyservice_measurement=stack.keyservice_measurement,
            run_dir=tmp_path / "replicas",
            platform=PlatformConfig(policy="sesemi", max_instances=1, keep_alive_s=120.0),
            min_replicas=1,
            replica_num_cpus=0.0,
            graceful_shutdown_timeout_s=5.0,
        )
        platform = RayPlatform(deploy(options), options=options)
        model = stack.add_model("stop-dense", dense_model(5, inputs=16, outputs=4))
        assert stack.user is not None
        rid = new_request_id()
        inputs: dict[str, Any] = {
            "X": np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
        }
        sealed = seal_input(
            model.request_key,
            inputs,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
            request_id=rid,
        )
        import asyncio

        asyncio.run(
            platform.infer(
                model_id=model.model_id,
                user_id=stack.user.principal_id,
                request_id=rid,
                sealed_input=sealed,
                deadline_s=time.time() + 60,
            )
        )
        deadline = time.monotonic() + 30
        pids = instance_pids(platform)
        while not pids and time.monotonic() < deadline:  # routing stats come every second
            time.sleep(0.2)
            pids = instance_pids(platform)
        host = next(pid for pid, name in pids.items() if name.startswith("instance host"))
        ours = descendants([os.getpid()])
        controller = next(p for p in ours if "ServeController" in (describe(p) or ""))
        for pid in (controller, host):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

        caplog.set_level(logging.INFO, logger="sealserve")
        began = time.monotonic()
        killed = stop(options, started=True, timeout_s=_BOUND_S, instance_pids=pids)
        took = time.monotonic() - began
    finally:
        for pid in stopped:  # whatever happened above, nothing stays stopped
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if ray.is_initialized():
            ray.shutdown()
        stack.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert took <= _BOUND_S + _SLACK_S, f"the stop took {took:.1f} s"
    assert not ray.is_initialized()
    # Nothing is left: the stopped controller went with Ray's shutdown or was killed; the
    # stopped host (whose lifeline cannot act while it is stopped) was killed and named.
    assert not wait_gone([controller, *pids, *killed], timeout_s=5.0)  # zombies count as gone
    kills = {
        r.sealserve_fields["pid"]: r.sealserve_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "stop.killed"
    }
    assert set(kills) == set(killed)
    assert host in killed, kills
    assert kills[host]["process"] == pids[host]
    timed_out = [
        r.sealserve_fields["step"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "stop.timed_out"
    ]
    assert "ray.undeploy" in timed_out  # the stopped controller could not delete the app
