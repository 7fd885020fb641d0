"""A real Prometheus (Debian's ``prometheus``, installed by scripts/ci-deps) scrapes what
``sealserve up`` runs, with the committed configuration, and finds every series the committed
Grafana dashboard uses."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealserve.client import GatewayClient, StoreClient, upload_model
from sealserve.crypto import Identity, RequestKey
from sealserve.errors import AccessDenied
from sealserve.platform import PlatformConfig
from tests.integration.e2e.conftest import Stack, close_stack, open_stack
from tests.unit.runtime.graphs import dense_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "sealserve.json"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMQL_NAME = re.compile(r"\b(sealserve_[a-z0-9_]+|up)\b")


def dashboard_series() -> set[str]:
    """Every metric name the dashboard's PromQL expressions read."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in doc["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    assert exprs, "the dashboard has no queries"
    names = set()
    for expr in exprs:
        bare = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
        bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", bare)  # grouping labels
        names |= set(PROMQL_NAME.findall(bare))
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - our own Prometheus
        doc = json.loads(answer.read())
    assert doc["status"] == "success", doc
    return doc["data"]


def wait_for(what: str, check: Any, timeout_s: float = 90.0) -> Any:
    """Poll ``check()`` until it returns something truthy (a failure after the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"Prometheus never saw {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ops_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = PlatformConfig(max_instances=1, instance_concurrency=2, keep_alive_s=600.0)
    s = open_stack(tmp_path_factory.mktemp("ops"), config)
    try:
        yield s
    finally:
        close_stack(s)


def drive(stack: Stack, tmp_path: Path) -> None:
    """What a day brings: an upload, a refused one, inferences granted and denied, a delete."""
    info = stack.deployment.info
    owner, user, stranger = stack.owner, stack.new_user(), stack.new_user()
    onnx = tmp_path / "dense.onnx"
    onnx.write_bytes(dense_model(3))
    with StoreClient(info.gateway_url, identity=owner.identity) as store:
        receipt = upload_model(owner, store, "dense", onnx)
        spare = upload_model(owner, store, "spare", onnx)
        store.delete(spare.model_id)
    with StoreClient(info.gateway_url, identity=Identity.generate()) as other:
        blob = b"x" * 100
        with pytest.raises(AccessDenied):  # another owner's model id: refused, counted
            other.upload(receipt.model_id, io.BytesIO(blob), size=100, key_version=9,
                         digest=hashlib.sha256(blob).hexdigest())  # fmt: skip
    owner.grant("dense", user.principal_id, stack.runtime_policy)
    key = RequestKey.generate()
    user.put_request_key(receipt.model_id, key, stack.runtime_policy)
    stranger_key = RequestKey.generate()
    stranger.put_request_key(receipt.model_id, stranger_key, stack.runtime_policy)
    x = {"X": np.ones((1, 64), np.float32)}
    with GatewayClient(info.gateway_url) as gateway:
        for _ in range(5):
            gateway.infer(receipt.model_id, x, user_id=user.principal_id, key=key)
        with pytest.raises(AccessDenied):  # no grant: the KeyService denies, and counts it
            gateway.infer(receipt.model_id, x, user_id=stranger.principal_id, key=stranger_key)


def test_prometheus_scrapes_every_service_and_finds_every_dashboard_series(
    ops_stack: Stack, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    assert binary is not None, "Prometheus is missing: run scripts/ci-deps (Debian: prometheus)"
    info = ops_stack.deployment.info
    drive(ops_stack, tmp_path)
    committed = SCRAPE_CONFIG.read_text()
    assert "http://127.0.0.1:8480/v1/prometheus/targets" in committed
    config = (
        committed.replace("http://127.0.0.1:8480", info.gateway_url)
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("refresh_interval: 15s", "refresh_interval: 1s")
    )
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
    )
    try:

        def targets_up() -> set[str]:
            try:
                data = query(base, "/api/v1/targets")
            except OSError:
                return set()
            up = {
                t["labels"].get("sealserve_service", "")
                for t in data["activeTargets"]
                if t["health"] == "up"
            }
            return up if up >= {"gateway", "keyservice", "instance"} else set()

        wait_for("the gateway, the KeyService and an instance up", targets_up)
        wanted = dashboard_series()
        assert len(wanted) > 30

        def seen_all() -> set[str]:
            names = set(query(base, "/api/v1/label/__name__/values"))
            return names if wanted <= names else set()

        try:
            wait_for("every series of the dashboard", seen_all, timeout_s=30.0)
        except AssertionError:
            names = set(query(base, "/api/v1/label/__name__/values"))
            raise AssertionError(f"series the dashboard uses but nobody exposes: "
                                 f"{sorted(wanted - names)}") from None  # fmt: skip
        ups = query(base, "/api/v1/query", query='up{job="sealserve"}')["result"]
        by_service = {r["metric"]["sealserve_service"]: r["value"][1] for r in ups}
        assert by_service == {"gateway": "1", "keyservice": "1", "instance": "1"}
        served = query(base, "/api/v1/query", query="sealserve_gateway_requests_total")
        codes = {r["metric"]["code"]: float(r["value"][1]) for r in served["result"]}
        assert codes.get("ok", 0) >= 5
        assert codes.get("access_denied", 0) >= 1
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
