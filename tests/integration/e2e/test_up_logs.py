"""The logs ``sealserve up`` writes (``<data-dir>/logs/*.log`` and each instance host's
``run/instances/instance-N.log``, with its runtime's lines) are JSON lines and hold no input,
output, model weights or key, after a sealed request with a unique marker went through."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sealserve.attest import Policy, TrustAnchors
from sealserve.client import GatewayClient, KeyServicePin, Owner, User, upload_model
from sealserve.crypto import Identity, RequestKey, SymmetricKey
from sealserve.instance import ModelStore
from tests.unit.runtime.graphs import marker_floats, marker_model

pytestmark = pytest.mark.integration


def secret_forms(secret: bytes) -> list[bytes]:
    """Pieces of ``secret``: raw, hex, base64 and Python's bytes repr (a log line is text: a
    plaintext that reached one would be written in one of these forms)."""
    pieces = [secret[i : i + 32] for i in range(0, max(1, len(secret) - 31), 16)]
    forms: list[bytes] = []
    for piece in pieces:
        text = repr(piece)[2:-1]
        forms += [piece, piece.hex().encode(), text.encode(), json.dumps(text)[1:-1].encode()]
        forms += [base64.b64encode(piece[i:])[4:36] for i in range(3)]
    return forms


def check_logs(data_dir: Path, secrets: dict[str, bytes]) -> list[Path]:
    """Every line of every log under ``data_dir`` is a JSON object and names no secret."""
    logs = sorted([*(data_dir / "logs").glob("*.log"), *(data_dir / "run").rglob("*.log")])
    needles = {name: secret_forms(value) for name, value in secrets.items()}
    for path in logs:
        raw = path.read_bytes()
        lines = raw.decode().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            assert isinstance(record, dict), f"{path}:{number} is not a JSON object: {line[:300]}"
        found = [name for name, forms in needles.items() if any(f in raw for f in forms)]
        assert found == [], f"{path} holds {found}"
    return logs


def test_the_log_check_sees_a_planted_secret_and_a_line_not_json(tmp_path: Path) -> None:
    secret = marker_floats(7, 64).tobytes()
    log = tmp_path / "logs" / "gateway.log"
    log.parent.mkdir()
    log.write_text('{"event": "gateway.started"}\n')
    assert check_logs(tmp_path, {"input": secret}) == [log]
    for form in (secret[10:60].hex(), repr(secret[5:70]), base64.b64encode(secret[1:]).decode()):
        log.write_text(json.dumps({"event": "x", "detail": form}) + "\n")
        with pytest.raises(AssertionError, match=r"holds \['input'\]"):
            check_logs(tmp_path, {"input": secret})
    log.write_text("Traceback (most recent call last):\n")
    with pytest.raises(AssertionError, match=r"gateway\.log:1 is not a JSON object: Traceback"):
        check_logs(tmp_path, {"input": secret})


def test_up_logs_are_json_lines_without_plaintext_or_keys(tmp_path: Path) -> None:
    ready = tmp_path / "up.json"
    command = [
        sys.executable, "-m", "sealserve", "up",
        "--data-dir", str(tmp_path / "data"),
        "--keyservice-port", "0",
        "--gateway-port", "0",
        "--ready-file", str(ready),
        "--log-level", "DEBUG",
    ]  # fmt: skip
    up = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and up.poll() is None:
            assert time.monotonic() < deadline, "timed out waiting for the ready file"
            time.sleep(0.1)
        assert up.poll() is None, up.communicate()[1].decode()[-2000:]
        info = json.loads(ready.read_text())
        seed = int.from_bytes(os.urandom(4), "big")
        weights = marker_floats(seed, 256)  # the model's known weight bytes
        marker = marker_floats(seed + 1, 256)  # this run's input
        model = marker_model(weights)
        (tmp_path / "m.onnx").write_bytes(model)
        assert (
            numpy_helper.to_array(onnx.load_model_from_string(model).graph.initializer[0]).tobytes()
            == weights.tobytes()
        )
        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({info["keyservice_measurement"]})),
            trust=TrustAnchors.from_data_dir(Path(info["data_dir"])),
        )
        runtime = Policy(measurements=frozenset({info["runtime_measurement"]}))
        model_key, request_key = SymmetricKey.generate(), RequestKey.generate()
        url = info["keyservice_url"]
        with (
            Owner(Identity.generate(), keyservice_url=url, pin=pin) as owner,
            User(Identity.generate(), keyservice_url=url, pin=pin) as user,
        ):
            owner.register()
            user.register()
            store = ModelStore(info["store_dir"])
            receipt = upload_model(owner, store, "m", tmp_path / "m.onnx", key=model_key)
            owner.grant("m", user.principal_id, runtime)
            user.put_request_key(receipt.model_id, request_key, runtime)
            with GatewayClient(info["gateway_url"]) as gateway:
                result = gateway.infer(
                    receipt.model_id, {"X": marker}, user_id=user.principal_id, key=request_key
                )
        np.testing.assert_array_equal(result.outputs["Z"], marker + weights)
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert up.returncode == 0, err.decode()[-2000:]
    scanned = check_logs(
        tmp_path / "data",
        secrets={
            "input": marker.tobytes(),
            "output": np.asarray(result.outputs["Z"]).tobytes(),
            "weights": weights.tobytes(),
            "model key": model_key.to_bytes(),
            "request key": request_key.to_bytes(),
        },
    )
    names = {p.name for p in scanned}
    assert {"gateway.log", "keyservice.log", "instance-0.log"} <= names, names
    assert all(p.stat().st_size > 0 for p in scanned if p.name != "tee.log")
