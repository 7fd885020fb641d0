"""The whole flow over TLS: ``sealserve up --tls`` makes a throwaway CA and every service
speaks HTTPS with it; owners upload and users infer over https:// with its CA bundle, and a
client that does not trust it, or speaks plain HTTP, gets nothing."""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from sealserve.client import GatewayClient, StoreClient, upload_model
from sealserve.crypto import RequestKey
from sealserve.errors import GatewayError, KeyServiceError
from sealserve.platform import PlatformConfig
from tests.integration.e2e.conftest import Stack, close_stack, open_stack
from tests.unit.runtime.graphs import dense_model, plain_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = PlatformConfig(max_instances=1, instance_concurrency=2, keep_alive_s=120.0)
    s = open_stack(tmp_path_factory.mktemp("tls"), config, local_tls=True)
    try:
        yield s
    finally:
        close_stack(s)


def test_every_service_speaks_https_and_a_sealed_model_is_uploaded_and_served(
    tls_stack: Stack, tmp_path: Path
) -> None:
    info = tls_stack.deployment.info
    assert info.gateway_url.startswith("https://")
    assert info.keyservice_url.startswith("https://")
    ca = Path(info.ca_bundle)
    assert ca.is_file()
    assert ca.parent == Path(info.data_dir) / "tls"
    assert not (ca.parent / "ca.key").exists()  # the CA's key was never written
    assert (ca.parent / "server.key").stat().st_mode & 0o077 == 0
    owner, user = tls_stack.owner, tls_stack.new_user()
    onnx = tmp_path / "dense.onnx"
    onnx.write_bytes(dense_model(5))
    with StoreClient(info.gateway_url, identity=owner.identity, ca_bundle=ca) as store:
        receipt = upload_model(owner, store, "dense", onnx)
    owner.grant("dense", user.principal_id, tls_stack.runtime_policy)
    key = RequestKey.generate()
    user.put_request_key(receipt.model_id, key, tls_stack.runtime_policy)
    x = {"X": np.ones((1, 64), np.float32)}
    with GatewayClient(info.gateway_url, ca_bundle=ca) as gateway:
        result = gateway.infer(receipt.model_id, x, user_id=user.principal_id, key=key)
        assert gateway.healthy()
    np.testing.assert_allclose(result.outputs["Y"], plain_run(dense_model(5), x)["Y"],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    platform = tls_stack.deployment.platform
    assert platform is not None
    urls = [inst["url"] for inst in platform.stats().to_json(recent=0)["instances"]]
    assert urls
    assert all(url.startswith("https://") for url in urls)  # instance hosts too
    context = ssl.create_default_context(cafile=str(ca))
    for url in [*urls, info.keyservice_url]:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()


def test_a_client_that_does_not_trust_the_ca_or_speaks_plain_http_gets_nothing(
    tls_stack: Stack,
) -> None:
    info = tls_stack.deployment.info
    with GatewayClient(info.gateway_url) as gateway, pytest.raises(GatewayError) as info_:
        gateway.models()  # the system's roots do not know the throwaway CA
    assert info_.value.retryable
    assert isinstance(info_.value.__cause__, httpx.ConnectError) or info_.value.__cause__ is None
    owner = tls_stack.owner
    with (
        StoreClient(info.gateway_url, identity=owner.identity) as store,
        pytest.raises(GatewayError, match="unreachable"),
    ):
        store.model(f"{owner.principal_id}/dense")
    from sealserve.client import Owner

    with pytest.raises(KeyServiceError, match="cannot reach"):
        Owner(owner.identity, keyservice_url=info.keyservice_url, pin=tls_stack.pin).open()
    plain = info.gateway_url.replace("https://", "http://")
    with httpx.Client() as client:
        try:
            answer = client.get(plain + "/healthz", timeout=5.0)
        except httpx.HTTPError:
            return  # the TLS server hung up on plain HTTP
        assert answer.status_code != 200


def test_the_ca_bundle_option_is_checked(tls_stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        GatewayClient("https://127.0.0.1:1", ca_bundle=tmp_path / "none.pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a certificate")
    with pytest.raises(ValueError, match="cannot load the CA bundle"):
        StoreClient("https://127.0.0.1:1", identity=tls_stack.owner.identity, ca_bundle=bad)
