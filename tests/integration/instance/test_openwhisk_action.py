"""The OpenWhisk action as its container starts it: the package's spec, the action's limits,
the node's TEE daemon, the action contract driven as the invoker drives it.

No Docker and no OpenWhisk here: ``sealserve platform openwhisk run`` (the image's entrypoint)
runs as a process of this machine with the package's ``action.json`` and ``platform.pub``, a
memory cgroup file as the invoker's ``docker run --memory`` would leave it, and
``__OW_ALLOW_CONCURRENT`` as the invoker sets it.  The runtime is launched by the stack's TEE
platform daemon (the "node's", in this process), not by anything the action started, and no
key is given to the action.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sealserve._lifeline import tie_to_this_process
from sealserve.bench._runtime_stack import LocalStack
from sealserve.platform.openwhisk import OpenWhiskOptions, write_package
from sealserve.protocol import seal_input, unseal_output
from tests.unit.runtime.graphs import dense_model, plain_run

pytestmark = pytest.mark.integration


def x(n: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"X": np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)}


def _package(stack: LocalStack, root: Path, *, tee_socket: Path) -> Path:
    wheel = root / "sealserve-0.1.0-py3-none-any.whl"  # the image's; not installed here
    wheel.write_bytes(b"PK")
    options = OpenWhiskOptions(
        keyservice_url=stack.keyservice_url,
        keyservice_measurement=stack.keyservice_measurement,
        memory_mb=2048,
        memory_budget_mb=1664,  # a 384 MB reserve
        concurrency=4,
        threads=1,
        tee_socket=str(tee_socket),
    )
    out = root / "package"
    write_package(out, options, wheel_file=wheel, platform_key_file=stack.platform_key_file)
    return out


def _run(
    package: Path, root: Path, stack: LocalStack, *, memory_bytes: int, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    cgroup = root / "cgroup"
    cgroup.mkdir(exist_ok=True)
    (cgroup / "memory.max").write_text(f"{memory_bytes}\n")
    ready = root / "action.ready"
    log = root / "action.log"
    command = [
        sys.executable, "-m", "sealserve", "platform", "openwhisk", "run",
        "--spec", str(package / "action.json"),
        "--platform-key", str(package / "platform.pub"),
        "--data-dir", str(root / "data"),
        "--store", str(stack.store.root),
        "--host", "127.0.0.1", "--port", "0",
        "--cgroup", str(cgroup),
        "--ready-file", str(ready),
    ]  # fmt: skip
    full = dict(os.environ, **env)
    lifeline = tie_to_this_process(full)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command,
            stdout=out,
            stderr=out,
            env=full,
            pass_fds=(lifeline,),
            start_new_session=True,
        )
    return popen, ready, log


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)


@pytest.mark.timeout(180)
def test_the_action_takes_its_limits_from_the_container_and_serves_the_contract(
    stack: LocalStack, tmp_path: Path
) -> None:
    model = stack.add_model("ow-action", dense_model(61, inputs=32, outputs=4))
    assert stack.user is not None
    user = stack.user.principal_id
    package = _package(stack, tmp_path, tee_socket=stack.socket_path)
    popen, ready, log = _run(
        package, tmp_path, stack, memory_bytes=1024 << 20, env={"__OW_ALLOW_CONCURRENT": "true"}
    )
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert popen.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the action did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        with httpx.Client(base_url=info["url"], timeout=60) as http:
            init = http.post("/init", json={"value": {"name": "sealed", "main": "main"}})
            assert init.status_code == 200

            def run(i: int) -> httpx.Response:
                rid = f"act-{i}"
                sealed = seal_input(
                    model.request_key, x(32, i), model_id=model.model_id, user_id=user,
                    request_id=rid,
                )  # fmt: skip
                body = {
                    "value": {"model_id": model.model_id, "user_id": user, "request_id": rid,
                              "input": base64.b64encode(sealed).decode()},
                    "activation_id": f"a{i}", "namespace": "guest",
                    "action_name": "/guest/sealserve/sealed-instance",
                    "deadline": time.time() * 1000 + 60_000,
                }  # fmt: skip
                return http.post("/run", json=body)

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(run, range(4)))
            stats = http.get("/v1/stats").json()
        for i, response in enumerate(answers):
            assert response.status_code == 200, response.text
            out = unseal_output(
                model.request_key, base64.b64decode(response.json()["output"]),
                model_id=model.model_id, user_id=user, request_id=f"act-{i}",
            )  # fmt: skip
            want = plain_run(dense_model(61, inputs=32, outputs=4), x(32, i))["Y"]
            np.testing.assert_allclose(out["Y"], want, rtol=1e-5, atol=1e-5)
        assert stats["instance"]["concurrency"] == 4  # the invoker allows concurrency
        # The node's daemon (this process) launched the runtime, not the action.
        runtime_pid = int(info["runtime_pid"])
        with open(f"/proc/{runtime_pid}/stat", encoding="ascii") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        assert parent == os.getpid()
    finally:
        _stop(popen)
    text = log.read_text(errors="replace")
    limits = json.loads(next(ln for ln in text.splitlines() if '"action.limits"' in ln))
    assert limits["memory_mb"] == 1024  # the container's memory limit, not the package's 2048
    assert limits["budget_mb"] == 640  # less the packaged 384 MB reserve
    assert limits["concurrency"] == 4
    assert "platform.key" not in text


def test_the_action_refuses_to_start_without_the_nodes_tee_or_with_too_little_memory(
    stack: LocalStack, tmp_path: Path
) -> None:
    missing = tmp_path / "no-tee" / "tee.sock"
    package = _package(stack, tmp_path, tee_socket=missing)
    popen, _, log = _run(package, tmp_path, stack, memory_bytes=1024 << 20, env={})
    assert popen.wait(60) == 2
    assert f"no TEE platform daemon socket at {missing}" in log.read_text()
    (tmp_path / "small").mkdir()
    small = _package(stack, tmp_path / "small", tee_socket=stack.socket_path)
    popen, _, log = _run(small, tmp_path / "small", stack, memory_bytes=256 << 20, env={})
    assert popen.wait(60) != 0
    assert "--memory 2048" in log.read_text()
