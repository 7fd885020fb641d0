"""``sealserve up --tls`` from the command line: the owner's and the user's commands on the same
data directory find the gateway and the local CA by themselves and work over HTTPS."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.runtime.graphs import dense_model, plain_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def sealserve(*args: str | Path) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "sealserve", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_up_with_tls_serves_owners_and_users_over_https(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ready = tmp_path / "up.json"
    command = [
        sys.executable, "-m", "sealserve", "up", "--tls",
        "--data-dir", str(data), "--keyservice-port", "0", "--gateway-port", "0",
        "--max-instances", "1", "--ready-file", str(ready), "--log-level", "WARNING",
    ]  # fmt: skip
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert up.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "sealserve up --tls did not start"
            time.sleep(0.2)
        info = json.loads(ready.read_text())
        assert info["gateway_url"].startswith("https://")
        assert info["keyservice_url"].startswith("https://")
        assert info["ca_bundle"] == str(data / "tls" / "ca.pem")
        ks = ["--data-dir", data, "--keyservice", info["keyservice_url"]]
        owner_id = sealserve("owner", "init", "--data-dir", data)["principal_id"]
        user_id = sealserve("user", "init", "--data-dir", data)["principal_id"]
        sealserve("owner", "register", *ks)
        sealserve("user", "register", *ks)
        onnx = tmp_path / "dense.onnx"
        onnx.write_bytes(dense_model(9))
        uploaded = sealserve("owner", "upload", onnx, "--name", "dense", "--grant", user_id,
                             "--measurement", info["runtime_measurement"], *ks)  # fmt: skip
        assert uploaded["store"] == info["gateway_url"]  # found in run/up.json
        x = np.ones((1, 64), np.float32)
        np.savez(tmp_path / "x.npz", X=x)
        out = tmp_path / "y.npz"
        sealserve("user", "infer", f"{owner_id}/dense", "--input", tmp_path / "x.npz",
                  "--measurement", info["runtime_measurement"], "--output", out, *ks)  # fmt: skip
        with np.load(out) as got:
            np.testing.assert_allclose(got["Y"], plain_run(dense_model(9), {"X": x})["Y"],
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
        listed = sealserve("gateway", "models", "--data-dir", data)
        assert [m["model_id"] for m in listed] == [f"{owner_id}/dense"]
        deleted = sealserve("owner", "delete", "dense", "--data-dir", data)
        assert deleted["deleted"] is True
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(10)
    assert up.returncode == 0
