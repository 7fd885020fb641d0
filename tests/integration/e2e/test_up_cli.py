"""``sealserve up`` as a user runs it: it starts everything, serves sealed inference, scales an
idle instance to zero and back, and stops on Ctrl-C with no process and no shared memory left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealserve.attest import Policy, TrustAnchors
from sealserve.client import GatewayClient, KeyServicePin, Owner, User, upload_model
from sealserve.crypto import Identity, RequestKey
from tests.unit.runtime.graphs import dense_model, plain_run

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _wait_until(what: str, predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("sealserve")}


def _publish_model(
    info: dict[str, Any], tmp_path: Path, onnx: bytes
) -> tuple[str, str, RequestKey]:
    """As a new owner and a new user of what ``up`` started (its ready file's ``info``):
    upload ``onnx`` as model ``m``, grant it to the user in the installed runtime, register a
    request key; the model's id, the user's id and the key."""
    from sealserve.instance import ModelStore

    pins = KeyServicePin(
        policy=Policy(measurements=frozenset({info["keyservice_measurement"]})),
        trust=TrustAnchors.from_data_dir(Path(info["data_dir"])),
    )
    runtime = Policy(measurements=frozenset({info["runtime_measurement"]}))
    (tmp_path / "m.onnx").write_bytes(onnx)
    with (
        Owner(Identity.generate(), keyservice_url=info["keyservice_url"], pin=pins) as owner,
        User(Identity.generate(), keyservice_url=info["keyservice_url"], pin=pins) as user,
    ):
        owner.register()
        user.register()
        receipt = upload_model(owner, ModelStore(info["store_dir"]), "m", tmp_path / "m.onnx")
        owner.grant("m", user.principal_id, runtime)
        key = RequestKey.generate()
        user.put_request_key(receipt.model_id, key, runtime)
    return receipt.model_id, user.principal_id, key


def test_up_serves_scales_to_zero_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    shm_before = _shm()
    ready = tmp_path / "up.json"
    command = [
        sys.executable, "-m", "sealserve", "up",
        "--data-dir", str(tmp_path / "data"),
        "--keyservice-port", "0",
        "--gateway-port", "0",
        "--keep-alive-s", "3",
        "--ready-file", str(ready),
    ]  # fmt: skip
    up = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until("the ready file", lambda: ready.exists() or up.poll() is not None, 120)
        assert up.poll() is None, up.communicate()[1].decode()[-2000:]
        info = json.loads(ready.read_text())
        onnx = dense_model(11)
        inputs = {"X": np.ones((1, 64), np.float32)}
        model_id, user_id, key = _publish_model(info, tmp_path, onnx)
        from sealserve.instance import InstanceClient

        with GatewayClient(info["gateway_url"]) as gateway:
            first = gateway.infer(model_id, inputs, user_id=user_id, key=key)
            np.testing.assert_allclose(first.outputs["Y"], plain_run(onnx, inputs)["Y"],
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
            assert first.route is not None
            assert first.route.kind == "start"
            (instance,) = gateway.platform()["instances"]
            pids = [instance["pid"], instance["runtime_pid"]]
            assert all(_alive(p) for p in pids)
            # The sealserve policy started the smallest size that holds the model, whose
            # runtime has that size's budget; it is billed that size.
            assert (instance["memory_mb"], instance["budget_mb"]) == (896, 512.0)
            with InstanceClient(instance["url"]) as host:
                budget = host.stats()["runtime"]["models"]["budget_bytes"]
            assert budget == 512 << 20
            # Idle past its keep-alive: the instance scales to zero, its processes end.
            _wait_until("scale to zero", lambda: not gateway.platform()["instances"])
            _wait_until("the instance's exit", lambda: not any(_alive(p) for p in pids))
            assert gateway.platform()["counters"]["scaled_to_zero"] == 1
            again = gateway.infer(model_id, inputs, user_id=user_id, key=key)
            assert again.route is not None
            assert again.route.kind == "start"  # from zero: a cold start again
            pids += [
                pid
                for inst in gateway.platform()["instances"]  # (unless idle past 3 s already)
                for pid in (inst["pid"], inst["runtime_pid"])
            ]
        pids += [info["pids"]["tee"], info["pids"]["keyservice"]]
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert up.returncode == 0, err.decode()[-2000:]
    text = out.decode()
    assert "sealserve is up" in text
    assert info["gateway_url"] in text
    assert info["runtime_measurement"] in text
    assert "instance sizes          896, 1408, 2048 MB (512, 1024, 1664 MB for models)" in text
    assert [s["memory_mb"] for s in info["shapes"]] == [896, 1408, 2048]
    assert "stopped: 2 requests served, 2 cold starts" in text
    _wait_until("every process to end", lambda: not any(_alive(p) for p in pids), 30)
    assert not ready.exists()
    assert not Path(info["tee_socket"]).parent.exists()
    assert _shm() - shm_before == set()
    logs = Path(info["logs_dir"])
    assert (logs / "gateway.log").stat().st_size > 0
    assert (logs / "keyservice.log").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--policy", "x"], {}, "error: --policy has value 'x'; use one of dedicated"),
        ([], {"SEALSERVE_PLATFORM_POLICY": "y"}, "error: Config 'platform.policy' has value 'y'"),
        (["--log-level", "LOUD"], {}, "error: --log-level has value 'LOUD'"),
        (["--policy", "dedicated-fitted"], {}, "error: --policy dedicated-fitted is a simulator"),
        (["--sizes-mb", "big"], {}, "error: --sizes-mb has value 'big'"),
        (["--sizes-mb", "256,1024"], {}, "error: Config 'platform.sizes_mb' has value [256, 1024]"),
        (
            [],
            {"SEALSERVE_RUNTIME_MEMORY_BUDGET_MB": "4096"},
            "error: Config 'runtime.memory_budget_mb' has value 4096. Must be less than "
            "'platform.instance_memory_mb' (2048)",
        ),
    ],
)
def test_up_refuses_bad_options_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sealserve", "up", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert result.returncode in (1, 2)
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was started


def test_nothing_outlives_up_when_it_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives ``up`` no chance to clean up: its instance hosts, the TEE daemon, the
    KeyService and the runtimes must still end (lifelines and the TEE watchdog)."""
    ready = tmp_path / "up.json"
    command = [
        sys.executable, "-m", "sealserve", "up",
        "--data-dir", str(tmp_path / "data"),
        "--keyservice-port", "0",
        "--gateway-port", "0",
        "--ready-file", str(ready),
    ]  # fmt: skip
    up = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pids: list[int] = []
    try:
        _wait_until("the ready file", lambda: ready.exists() or up.poll() is not None, 120)
        assert up.poll() is None, up.communicate()[1].decode()[-2000:]
        info = json.loads(ready.read_text())
        model_id, user_id, key = _publish_model(info, tmp_path, dense_model(3))
        with GatewayClient(info["gateway_url"]) as gateway:
            gateway.infer(model_id, {"X": np.ones((1, 64), np.float32)}, user_id=user_id, key=key)
            (instance,) = gateway.platform()["instances"]
            pids += [instance["pid"], instance["runtime_pid"]]
        pids += [info["pids"]["tee"], info["pids"]["keyservice"]]
        assert all(_alive(p) for p in pids)
        up.send_signal(signal.SIGKILL)
        up.wait(30)
        _wait_until("every process to end", lambda: not any(_alive(p) for p in pids), 60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        assert up.stderr is not None
        up.stderr.close()


def test_up_stops_within_its_bound_and_names_the_host_it_had_to_kill(tmp_path: Path) -> None:
    """Ctrl-C with an instance host that cannot stop (SIGSTOP: not even its lifeline runs):
    ``up`` still exits, within the local backend's bound (SIGTERM, ``stop_timeout_s`` 20 s,
    then SIGKILL), kills the host and names it in the gateway's log."""
    ready = tmp_path / "up.json"
    command = [
        sys.executable, "-m", "sealserve", "up",
        "--data-dir", str(tmp_path / "data"),
        "--keyservice-port", "0",
        "--gateway-port", "0",
        "--keep-alive-s", "600",
        "--ready-file", str(ready),
    ]  # fmt: skip
    up = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    host = 0
    try:
        _wait_until("the ready file", lambda: ready.exists() or up.poll() is not None, 120)
        assert up.poll() is None, up.communicate()[1].decode()[-2000:]
        info = json.loads(ready.read_text())
        model_id, user_id, key = _publish_model(info, tmp_path, dense_model(4))
        with GatewayClient(info["gateway_url"]) as gateway:
            gateway.infer(model_id, {"X": np.ones((1, 64), np.float32)}, user_id=user_id, key=key)
            (instance,) = gateway.platform()["instances"]
            host, runtime = instance["pid"], instance["runtime_pid"]
        os.kill(host, signal.SIGSTOP)
        began = time.monotonic()
        up.send_signal(signal.SIGINT)
        up.wait(120)
        took = time.monotonic() - began
    finally:
        if host and _alive(host):
            os.kill(host, signal.SIGKILL)
        if up.poll() is None:
            up.kill()
            up.wait()
        assert up.stderr is not None
        err = up.stderr.read().decode()
        up.stderr.close()
    assert up.returncode == 0, err[-2000:]
    # 20 s for the host's SIGTERM, then the kill; the slack is for a loaded machine.
    assert took < 60, f"up took {took:.1f} s to stop"
    _wait_until("the host and its runtime to end", lambda: not _alive(host) and not _alive(runtime))
    events = [
        json.loads(line)
        for line in (Path(info["logs_dir"]) / "gateway.log").read_text().splitlines()
        if line.startswith("{")
    ]
    killed = [e for e in events if e.get("event") == "stop.killed"]
    assert killed, events[-10:]
    assert any(k.get("pid") == host for k in killed), killed
