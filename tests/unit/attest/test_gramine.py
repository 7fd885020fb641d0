"""The gramine backend against a fake of Gramine's /dev/attestation (tests/hwfakes/gramine.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.attest import local_evidence, local_sealing_key
from sealserve.attest._gramine import GramineAttestation
from sealserve.errors import TeeError
from tests.hwfakes.gramine import FakeGramine, synthetic_sgx_quote

RD = bytes(range(64))


@pytest.fixture
def gramine(tmp_path: Path) -> Iterator[FakeGramine]:
    with FakeGramine(tmp_path / "attestation") as fake:
        yield fake


def test_the_quote_is_over_the_report_data_just_written(gramine: FakeGramine) -> None:
    attestation = GramineAttestation(gramine.root, collateral=b"{}")
    attestation.check()
    first = attestation.quote(RD)
    assert first[48 + 320 : 48 + 384] == RD
    second = attestation.evidence(bytes(64))
    assert second.format == "sgx-dcap"
    assert second.report_data == bytes(64)
    assert second.measurement == gramine.mrenclave
    assert gramine.user_report_data == bytes(64)


def test_a_quote_over_other_report_data_is_refused(tmp_path: Path) -> None:
    stale = synthetic_sgx_quote(bytes(64))
    with (
        FakeGramine(tmp_path / "a", make_quote=lambda rd: stale) as fake,
        pytest.raises(TeeError, match="other report_data"),
    ):
        GramineAttestation(fake.root).quote(RD)


def test_no_enclave_and_no_collateral_are_clear_errors(
    gramine: FakeGramine, tmp_path: Path
) -> None:
    with pytest.raises(TeeError, match="not inside a Gramine SGX enclave"):
        GramineAttestation(tmp_path / "absent").check()
    (gramine.root / "attestation_type").write_text("none\n")
    with pytest.raises(TeeError, match="dcap"):
        GramineAttestation(gramine.root).check()
    with pytest.raises(TeeError, match="collateral"):
        GramineAttestation(gramine.root).evidence(RD)


def test_sealing_keys_follow_mrenclave_and_the_cpu(tmp_path: Path) -> None:
    cpu = b"\x01" * 32

    def root(name: str, mrenclave: bytes, secret: bytes) -> bytes:
        with FakeGramine(tmp_path / name, mrenclave=mrenclave, cpu_secret=secret) as fake:
            return GramineAttestation(fake.root).sealing_root()

    same = root("a", b"\x22" * 32, cpu)
    assert same == root("b", b"\x22" * 32, cpu)
    assert same != root("c", b"\x44" * 32, cpu)  # another enclave
    assert same != root("d", b"\x22" * 32, b"\x02" * 32)  # another CPU


def test_local_evidence_and_sealing_keys_inside_the_enclave(
    gramine: FakeGramine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collateral = tmp_path / "collateral.json"
    collateral.write_text("{}")
    monkeypatch.delenv("SEALSERVE_TEE_FD", raising=False)
    monkeypatch.setenv("SEALSERVE_TEE_BACKEND", "gramine")
    monkeypatch.setenv("SEALSERVE_TEE_GRAMINE_DIR", str(gramine.root))
    monkeypatch.setenv("SEALSERVE_TEE_DCAP_COLLATERAL", str(collateral))
    monkeypatch.setenv("SEALSERVE_TEE_CONFIG", "{}")
    evidence = local_evidence(RD)
    assert evidence.format == "sgx-dcap"
    assert evidence.report_data == RD
    key = local_sealing_key("keyservice/master-key")
    assert key == local_sealing_key("keyservice/master-key")
    assert key != local_sealing_key("other")
    # another launch config fixed in another manifest gets another key
    monkeypatch.setenv("SEALSERVE_TEE_CONFIG", '{"x": "1"}')
    assert key != local_sealing_key("keyservice/master-key")


def test_the_manifest_measures_what_the_runtime_loads(tmp_path: Path) -> None:
    from sealserve.cli import app

    snapshot, out = tmp_path / "snapshot", tmp_path / "runtime.manifest.template"
    result = CliRunner().invoke(
        app,
        [
            "attest", "gramine-manifest", "--entry", "runtime", "--snapshot", str(snapshot),
            "--config", "keyservice_policy={}", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert (snapshot / "sealserve" / "runtime" / "_main.py").exists()
    assert 'sgx.remote_attestation = "dcap"' in text
    assert "sgx.debug = false" in text
    assert f'"file:{snapshot.resolve()}/",' in text
    assert '"sealserve.runtime._main"]' in text
    assert 'loader.env.SEALSERVE_TEE_BACKEND = "gramine"' in text
    assert "allowed_files" not in text.replace("# No sgx.allowed_files", "")
    import onnxruntime

    site = Path(onnxruntime.__file__).resolve().parents[1]
    assert f'"file:{site}/",' in text  # onnxruntime's native libraries are trusted files
    measured = hashlib.sha256(text.encode()).hexdigest()
    args = ["attest", "gramine-manifest", "--snapshot", str(snapshot)]
    again = CliRunner().invoke(app, [*args, "--config", "keyservice_policy={}"])
    assert hashlib.sha256(again.output.encode()).hexdigest() == measured


def test_the_gramine_launcher_measures_mrenclave_and_refuses_what_an_enclave_cannot_do(
    tmp_path: Path,
) -> None:
    from sealserve.attest._gramine import gramine_manifest
    from sealserve.attest.tee import GramineLauncher
    from tests.hwfakes.gramine_sgx import sign

    snapshot = tmp_path / "snapshot"
    (snapshot / "sealserve").mkdir(parents=True)
    (snapshot / "sealserve" / "__init__.py").write_text("")
    config = {"keyservice_policy": "{}"}
    template = gramine_manifest("runtime", snapshot=snapshot, config=config)
    manifests = tmp_path / "manifests"
    mrenclave = sign(template, manifests, "runtime")
    launcher = GramineLauncher(manifests, command=["gramine-sgx"])
    assert launcher.passes_fds is False
    assert launcher.launch_config("runtime") == config
    assert launcher.measurement("runtime", config=config) == mrenclave
    # the manifest fixes the measured config: another one is another enclave
    with pytest.raises(TeeError, match="fixes another launch config"):
        launcher.measurement("runtime", config={"keyservice_policy": "[]"})
    with pytest.raises(TeeError, match="inherits no descriptors"):
        launcher.launch("runtime", config=config, fds=[0])
    with pytest.raises(TeeError, match="debug enclave"):
        launcher.launch("runtime", config=config, debug=True)
    with pytest.raises(TeeError, match=r"keyservice\.sig"):
        launcher.measurement("keyservice")
    # the runtime's manifest passes its host's named sockets through, and no descriptor
    text = (manifests / "runtime.manifest.sgx").read_text()
    assert "loader.env.SEALSERVE_IPC_SOCKET = { passthrough = true }" in text
    assert "SEALSERVE_PASSED_FDS" not in text
    assert 'loader.argv = ["' in text
