"""The error table, the Server-Timing header, the client's error mapping, and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.attest import measure
from sealserve.cli import app
from sealserve.crypto import SymmetricKey, seal_model
from sealserve.ecall import runtime_launch_config
from sealserve.errors import (
    AccessDenied,
    CapacityExhausted,
    DeadlineExceeded,
    InstanceError,
    InvalidEnvelope,
    KeyServiceError,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    ModelNotStored,
    RuntimeUnavailable,
    SealserveError,
    StoreIntegrityError,
)
from sealserve.instance import ModelStore
from sealserve.protocol import error_body, error_for_exception, headers, raise_for_error

runner = CliRunner()


def _unreachable() -> KeyServiceError:
    exc = KeyServiceError("the KeyService at http://ks is unreachable")
    exc.retryable = True
    return exc


@pytest.mark.parametrize(
    ("exc", "status", "code", "retryable"),
    [
        (InvalidEnvelope(), 400, "invalid_envelope", False),
        (AccessDenied(), 403, "access_denied", False),
        (ModelNotAvailable("x"), 404, "model_not_available", False),
        (ModelNotStored("x"), 404, "model_not_available", False),
        (StoreIntegrityError("x"), 404, "model_not_available", False),
        (MemoryBudgetExceeded("x"), 507, "memory_budget_exceeded", False),
        (KeyServiceError("x"), 502, "keyservice_error", False),
        (_unreachable(), 503, "keyservice_unavailable", True),
        (DeadlineExceeded("x"), 503, "deadline_exceeded", True),
        (RuntimeUnavailable("x"), 503, "runtime_unavailable", True),
        (ValueError("bad"), 400, "bad_request", False),
        (ZeroDivisionError("secret"), 500, "internal", False),
    ],
)
def test_each_error_has_its_status_code_and_retryability(
    exc: Exception, status: int, code: str, retryable: bool
) -> None:
    error = error_for_exception(exc)
    assert (error.status, error.code, error.retryable) == (status, code, retryable)
    assert ("retry-after" in error.headers()) is retryable
    assert "secret" not in error.message
    doc = json.loads(error_body(error))
    assert doc["error"]["code"] == code
    with pytest.raises((ValueError, SealserveError)) as info:
        raise_for_error(status, error_body(error))
    assert getattr(info.value, "retryable", False) is retryable


def test_the_client_maps_codes_back_to_sealserve_errors() -> None:
    def answer(code: str, status: int = 503) -> tuple[int, bytes]:
        body = {"error": {"code": code, "message": "m", "retryable": status == 503}}
        return status, json.dumps(body).encode()

    for code, cls in (
        ("invalid_envelope", InvalidEnvelope),
        ("access_denied", AccessDenied),
        ("runtime_unavailable", RuntimeUnavailable),
        ("overloaded", CapacityExhausted),
        ("deadline_exceeded", DeadlineExceeded),
    ):
        with pytest.raises(cls):
            raise_for_error(*answer(code))
    with pytest.raises(InstanceError, match="without an error object"):
        raise_for_error(502, b"Bad Gateway")
    raise_for_error(200, b"")


def test_server_timing_round_trips() -> None:
    stages = {"inference": 4.25, "output_seal": 0.125, "total": 5.0}
    value = headers.format_server_timing(stages)
    assert value == "inference;dur=4.250, output_seal;dur=0.125, total;dur=5.000"
    assert headers.parse_server_timing(value) == stages
    assert headers.parse_server_timing('a;desc="x";dur=1, b, c;dur=zz') == {"a": 1.0}


def test_serve_refuses_bad_options_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["instance", "serve", "--store", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --store")
    (tmp_path / "store").mkdir()
    result = runner.invoke(
        app, ["instance", "serve", "--store", str(tmp_path / "store"), "--log-level", "LOUD"]
    )
    assert result.exit_code == 2
    assert "--log-level" in result.output
    result = runner.invoke(
        app,
        ["instance", "serve", "--store", str(tmp_path / "store"), "--keyservice", "ftp://x"],
    )
    assert result.exit_code == 1
    assert "keyservice_url" in result.output
    assert "Traceback" not in result.output


def test_measurement_is_the_runtime_pinned_to_that_keyservice(tmp_path: Path) -> None:
    key_file = tmp_path / "platform.pub"
    key_file.write_text(("07" * 32) + "\n")
    result = runner.invoke(
        app,
        [
            "instance", "measurement", "--keyservice-measurement", "11" * 32,
            "--platform-key", str(key_file), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    from sealserve.attest import Policy, TrustAnchors

    config = runtime_launch_config(
        keyservice_policy=Policy(measurements=frozenset({"11" * 32})),
        trust=TrustAnchors(simulated_platform_keys=frozenset({bytes.fromhex("07" * 32)})),
    )
    assert doc["config"] == config
    assert doc["measurement"] == measure("runtime", config=config)


def test_store_list_and_verify(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    model_id = ("ab" * 32) + "/m"
    sealed = io.BytesIO()
    seal_model(
        SymmetricKey.generate(), io.BytesIO(b"x" * 5000), sealed, model_id=model_id, version=2
    )
    result = runner.invoke(app, ["instance", "store", "list", "--store", str(store.root)])
    assert result.output.strip() == "no models"
    store.put(model_id, sealed.getvalue(), key_version=2)
    result = runner.invoke(app, ["instance", "store", "list", "--store", str(store.root)])
    assert result.exit_code == 0
    assert f"{model_id}  v2" in result.output
    listed = runner.invoke(app, ["instance", "store", "list", "--store", str(store.root), "--json"])
    assert json.loads(listed.output)[0]["model_id"] == model_id
    ok = runner.invoke(app, ["instance", "store", "verify", "--store", str(store.root), model_id])
    assert ok.exit_code == 0
    assert ": ok (" in ok.output
    blob = next((store.root / "blobs" / "sha256").iterdir())
    blob.chmod(0o644)
    blob.write_bytes(b"\x00" + blob.read_bytes()[1:])
    bad = runner.invoke(app, ["instance", "store", "verify", "--store", str(store.root), model_id])
    assert bad.exit_code == 1
    assert bad.output.startswith("error: the stored blob")


def test_the_hosts_shared_keyservice_tls_context_still_verifies() -> None:
    """The KeyService client's default context is built once per process (the host template
    builds it before forking hosts) and is httpx's verifying one: certificates and names."""
    import ssl

    from sealserve.instance._supervisor import default_verify_context

    context = default_verify_context()
    assert default_verify_context() is context
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # roots to verify against, loaded
