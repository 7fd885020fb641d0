"""The owner's and the user's commands against a running stack: upload with grants, sealed
inference on a photo and on text, the model list, the platform's status, and errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealserve.models import build, sample_image_path
from sealserve.platform import PlatformConfig
from tests.integration.e2e.conftest import Stack, close_stack, open_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = open_stack(tmp_path_factory.mktemp("cli"), PlatformConfig(max_instances=2))
    try:
        yield s
    finally:
        close_stack(s)


def sealserve(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sealserve", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def test_an_owner_uploads_and_a_user_infers_from_the_command_line(
    cli_stack: Stack, tmp_path: Path
) -> None:
    info = cli_stack.deployment.info
    data = tmp_path / "principals"
    pins = [
        "--data-dir", data,
        "--keyservice", info.keyservice_url,
        "--keyservice-measurement", info.keyservice_measurement,
        "--platform-key", info.platform_key_file,
    ]  # fmt: skip
    owner_id = as_json(sealserve("owner", "init", "--data-dir", data, "--json"))["principal_id"]
    user_id = as_json(sealserve("user", "init", "--data-dir", data, "--json"))["principal_id"]
    sealserve("owner", "register", *pins)
    sealserve("user", "register", *pins)
    zoo = tmp_path / "zoo"
    grant = ["--grant", user_id, "--measurement", info.runtime_measurement]
    uploaded = as_json(
        sealserve(
            "owner",
            "upload",
            build("mobilenet-v2", zoo),
            "--name",
            "mobilenet-v2",
            "--store",
            info.store_dir,
            *grant,
            *pins,
            "--json",
        )
    )
    assert uploaded["model_id"] == f"{owner_id}/mobilenet-v2"
    assert uploaded["key_version"] == 1
    assert uploaded["granted"] == [user_id]
    assert uploaded["sealed_bytes"] > uploaded["plain_bytes"]
    assert Path(uploaded["key_file"]).stat().st_mode & 0o077 == 0
    text = sealserve("owner", "upload", build("minilm-int8", zoo), "--name", "minilm",
                     "--store", info.store_dir, *grant, *pins)  # fmt: skip
    assert f"model {owner_id}/minilm key version 1" in text.stdout
    assert f"granted {user_id}" in text.stdout

    photo = sealserve("user", "infer", f"{owner_id}/mobilenet-v2", "--input", sample_image_path(),
                      "--gateway", info.gateway_url, "--measurement", info.runtime_measurement,
                      *pins, "--json")  # fmt: skip
    doc = as_json(photo)
    assert doc["registered_request_key"] is True
    assert len(doc["result"]["top"][0]) == 5
    assert doc["route"].startswith("start i")
    assert doc["timings_ms"]["inference"] > 0
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("The cat sat on the mat.\nA cat was sitting on a rug.\n")
    embedded = sealserve("user", "infer", f"{owner_id}/minilm", "--input", sentences,
                         "--gateway", info.gateway_url, "--measurement", info.runtime_measurement,
                         *pins)  # fmt: skip
    assert "2 embedding(s) of 384 dimensions" in embedded.stdout
    assert "cosine similarity of the first two" in embedded.stdout
    assert "route:" in embedded.stdout
    again = sealserve("user", "infer", f"{owner_id}/minilm", "--input", sentences,
                      "--gateway", info.gateway_url, *pins)  # fmt: skip
    assert "registered a request key" not in again.stdout  # the key file is reused

    models = as_json(sealserve("gateway", "models", "--gateway", info.gateway_url, "--json"))
    assert {m["model_id"] for m in models} >= {f"{owner_id}/mobilenet-v2", f"{owner_id}/minilm"}
    status = sealserve("platform", "status", "--gateway", info.gateway_url)
    assert "policy sealserve" in status.stdout
    assert "[load]" in status.stdout
    stats = as_json(sealserve("platform", "status", "--gateway", info.gateway_url, "--json"))
    assert stats["counters"]["served"] >= 3

    missing = sealserve("user", "infer", f"{owner_id}/nothing", "--input", sentences, "--as",
                        "minilm", "--gateway", info.gateway_url, "--measurement",
                        info.runtime_measurement, *pins, check=False)  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: no model")
    assert len(missing.stderr.strip().splitlines()) == 1
    wrong = sealserve("user", "infer", f"{owner_id}/minilm", "--input", sample_image_path(),
                      "--gateway", info.gateway_url, *pins, check=False)  # fmt: skip
    assert wrong.returncode == 1
    assert "is an image, but the model is not an image model" in wrong.stderr


def test_gateway_serve_runs_a_gateway_against_a_running_keyservice_and_daemon(
    cli_stack: Stack, tmp_path: Path
) -> None:
    import numpy as np

    from sealserve.client import GatewayClient
    from tests.unit.runtime.graphs import dense_model, plain_run

    info = cli_stack.deployment.info
    user = cli_stack.new_user()
    model = cli_stack.add_model("dense-gw", dense_model(31), tmp_path, grant=[user])
    command = [
        sys.executable, "-m", "sealserve", "gateway", "serve",
        "--store", info.store_dir,
        "--tee-socket", info.tee_socket,
        "--keyservice", info.keyservice_url,
        "--keyservice-measurement", info.keyservice_measurement,
        "--platform-key", info.platform_key_file,
        "--data-dir", str(tmp_path / "gw"),
        "--port", "0",
        "--policy", "lru-multiplex",
        "--log-level", "WARNING",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        assert ready["event"] == "gateway.ready"
        assert ready["policy"] == "lru-multiplex"
        x = {"X": np.ones((1, 64), np.float32)}
        with GatewayClient(ready["url"]) as client:
            result = client.infer(
                model, x, user_id=user.principal_id, key=cli_stack.key(user, model)
            )
        np.testing.assert_allclose(result.outputs["Y"], plain_run(dense_model(31), x)["Y"],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        assert result.route is not None
        assert result.route.policy == "lru-multiplex"
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=90)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err[-2000:]


def test_an_owner_uploads_through_the_gateway_and_deletes_from_the_command_line(
    cli_stack: Stack, tmp_path: Path
) -> None:
    from sealserve.instance import open_store
    from tests.unit.runtime.graphs import dense_model

    info = cli_stack.deployment.info
    data = tmp_path / "owner"
    pins = [
        "--data-dir", data,
        "--keyservice", info.keyservice_url,
        "--keyservice-measurement", info.keyservice_measurement,
        "--platform-key", info.platform_key_file,
    ]  # fmt: skip
    owner_id = as_json(sealserve("owner", "init", "--data-dir", data, "--json"))["principal_id"]
    sealserve("owner", "register", *pins)
    onnx = tmp_path / "dense.onnx"
    onnx.write_bytes(dense_model(7))
    with socket.socket() as probe:  # a port nobody listens on: the connection breaks
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    broken = sealserve("owner", "upload", onnx, "--name", "dense", "--gateway", dead,
                       "--retries", "0", *pins, check=False)  # fmt: skip
    assert broken.returncode == 1
    assert "run the same command again to resume the upload" in broken.stderr
    assert (data / "owner" / "uploads" / "dense" / "sealed").is_file()
    upload = ["owner", "upload", onnx, "--name", "dense", "--gateway", info.gateway_url, *pins]
    uploaded = as_json(sealserve(*upload, "--json"))
    model_id = f"{owner_id}/dense"
    assert uploaded["resumed"] is True  # the bytes sealed by the broken run were sent
    assert not (data / "owner" / "uploads" / "dense").exists()
    assert uploaded["store"] == info.gateway_url
    stored = open_store(info.store_dir).get(model_id)
    assert (stored.size, stored.key_version) == (uploaded["sealed_bytes"], 1)
    assert f"sha256:{stored.digest}" == uploaded["digest"]
    again = as_json(sealserve(*upload, "--json"))
    assert again["resumed"] is False
    assert again["key_version"] == 2  # a new key, a new sealed blob replacing the old
    assert open_store(info.store_dir).get(model_id).key_version == 2
    stranger = tmp_path / "stranger"
    sealserve("owner", "init", "--data-dir", stranger)
    # another owner's delete names its own model id: nothing of this owner's is touched
    refused = sealserve("owner", "delete", "dense", "--gateway", info.gateway_url,
                        "--data-dir", stranger, check=False)  # fmt: skip
    assert refused.returncode == 1
    assert "no model" in refused.stderr
    delete = ["owner", "delete", "dense", "--gateway", info.gateway_url, "--data-dir", data]
    deleted = as_json(sealserve(*delete, "--json"))
    assert deleted == {"model_id": model_id, "digest": again["digest"], "deleted": True}
    assert model_id not in open_store(info.store_dir)
