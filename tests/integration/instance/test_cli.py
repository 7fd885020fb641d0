"""``sealserve instance serve`` as a platform starts it: embedded TEE, ready line, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sealserve.errors import InstanceError
from sealserve.instance import InstanceClient


def test_serve_with_an_embedded_platform_announces_itself_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    ready = tmp_path / "ready.json"
    command = [
        sys.executable, "-m", "sealserve", "instance", "serve",
        "--store", str(store),
        "--keyservice", "http://127.0.0.1:9",  # never contacted: no request asks for keys
        "--no-attest-at-start",  # and the runtime does not attest it at its start either
        "--port", "0",
        "--data-dir", str(tmp_path / "data"),
        "--ready-file", str(ready),
        "--log-level", "WARNING",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            assert process.stdout is not None
            doc = json.loads(process.stdout.readline())
            assert doc["event"] == "instance.ready"
            assert doc["port"] > 0
            assert doc["url"] == f"http://127.0.0.1:{doc['port']}"
            assert doc["runtime_start_ms"] > 0
            assert doc["sandbox_start_ms"] > 0
            assert json.loads(ready.read_text()) == doc
            health = httpx.get(doc["url"] + "/healthz", timeout=10)
            assert health.json() == {"status": "ok", "runtime": "ready"}
            metrics = httpx.get(doc["url"] + "/metrics", timeout=10).text
            assert "sealserve_ipc_messages_total" in metrics  # the data plane's series too
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
            assert not ready.exists()
            assert process.stderr is not None
            assert b"Traceback" not in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_the_client_reports_an_unreachable_instance_as_retryable() -> None:
    with InstanceClient("http://127.0.0.1:9", timeout_s=5) as client:
        assert client.healthy() is False
        with pytest.raises(InstanceError, match="unreachable") as info:
            client.stats()
        assert info.value.retryable
