"""``sealserve attest verify-snp | verify-tpm | verify-azure-cvm | snp-cache fill``: exit 0 only
when everything verified, 1 with a one-line reason when refused, 2 for a usage mistake."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from sealserve.attest._synthetic import SyntheticAmd, SyntheticTpm, hcl_report
from sealserve.cli import app

runner = CliRunner()
NOW = "1750000000"
TCB = {"bootloader": 2, "tee": 0, "snp": 9, "microcode": 77}
CHIP = bytes(range(64))
AZURE_NONCE = (
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a"
    "a398f647caa2338748cd0fd9f5f819ef"
)


@pytest.fixture(scope="module")
def amd() -> SyntheticAmd:
    return SyntheticAmd("Milan")


def _snp_files(amd: SyntheticAmd, folder: Path, **report: object) -> list[str]:
    key, vcek = amd.leaf(tcb=TCB, chip_id=CHIP)
    args = {"tcb": TCB, "chip_id": CHIP, "measurement": b"\x42" * 48, **report}
    (folder / "report.bin").write_bytes(amd.report(key, **args))  # type: ignore[arg-type]
    (folder / "vcek.der").write_bytes(amd.der(vcek))
    (folder / "chain.pem").write_bytes(
        amd.ask.public_bytes(Encoding.PEM) + amd.ark.public_bytes(Encoding.PEM)
    )
    return [
        "attest", "verify-snp", str(folder / "report.bin"), "--now", NOW,
        "--cert", str(folder / "vcek.der"), "--cert", str(folder / "chain.pem"),
        "--ark-pin", f"Milan={amd.ark_pin}",
    ]  # fmt: skip


def _refs(folder: Path, doc: dict[str, object]) -> list[str]:
    path = folder / f"refs-{len(list(folder.iterdir()))}.json"
    path.write_text(json.dumps({"version": 1, **doc}))
    return ["--reference-values", str(path)]


def test_verify_snp(amd: SyntheticAmd, tmp_path: Path) -> None:
    args = _snp_files(amd, tmp_path)
    ok = runner.invoke(app, [*args, "--json"])
    assert ok.exit_code == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["verified"] is True
    assert doc["measurement"] == "42" * 48
    assert doc["tcb"] == TCB
    text = runner.invoke(app, args)
    assert text.exit_code == 0
    assert "Milan" in text.stdout
    good_refs = _refs(tmp_path, {"snp": {"min_tcb": {"Milan": TCB}}})
    assert runner.invoke(app, [*args, *good_refs]).exit_code == 0
    assert runner.invoke(app, [*args, "--measurement", "42" * 48]).exit_code == 0
    for extra, needle in [
        (["--measurement", "00" * 48], "launch measurement"),
        (["--report-data", "11" * 64], "report_data"),
        (_refs(tmp_path, {"snp": {"min_tcb": {"Milan": {**TCB, "snp": 10}}}}), "min_tcb"),
    ]:
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 1, result.stdout
        assert needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # Without the test ARK pinned, AMD's pins refuse the test hierarchy.
    unpinned = runner.invoke(app, args[:-2])
    assert unpinned.exit_code == 1
    assert "no ARK pinned" in unpinned.stderr


def test_verify_snp_refuses_a_debug_guest_unless_allowed(amd: SyntheticAmd, tmp_path: Path) -> None:
    args = _snp_files(amd, tmp_path, policy=0x30000 | 1 << 19)
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    assert "debugging" in refused.stderr
    assert runner.invoke(app, [*args, "--allow-debug"]).exit_code == 0


def test_usage_mistakes_exit_2(amd: SyntheticAmd, tmp_path: Path) -> None:
    args = _snp_files(amd, tmp_path)
    for extra in (
        ["--ark-pin", "Rome=00"],
        ["--reference-values", str(tmp_path / "missing.json")],
        ["--report-data", "zz"],
    ):
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 2, result.stdout
    missing = runner.invoke(app, ["attest", "verify-snp", str(tmp_path / "none"), "--now", NOW])
    assert missing.exit_code == 2
    assert runner.invoke(app, [*args[:4], "-5", *args[5:]]).exit_code == 2


def test_verify_tpm_with_json_pcrs(tmp_path: Path) -> None:
    tpm = SyntheticTpm(scheme="ecdsa")
    pcrs = {"sha256": {i: hashlib.sha256(bytes([i])).digest() for i in range(8)}}
    attest, signature = tpm.quote(nonce=b"q" * 32, pcrs=pcrs)
    (tmp_path / "msg").write_bytes(attest)
    (tmp_path / "sig").write_bytes(signature)
    (tmp_path / "ak.der").write_bytes(tpm.ak_chain[0])
    (tmp_path / "root.pem").write_bytes(tpm.ca.public_bytes(Encoding.PEM))
    (tmp_path / "pcrs.json").write_text(
        json.dumps({"sha256": {str(i): v.hex() for i, v in pcrs["sha256"].items()}})
    )
    args = [
        "attest", "verify-tpm", str(tmp_path / "msg"), str(tmp_path / "sig"), "--now", NOW,
        "--pcrs", str(tmp_path / "pcrs.json"), "--ak-cert", str(tmp_path / "ak.der"),
        "--root", str(tmp_path / "root.pem"), "--nonce", (b"q" * 32).hex(),
    ]  # fmt: skip
    ok = runner.invoke(app, [*args, "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["pcrs"]["sha256"]["7"] == pcrs["sha256"][7].hex()
    pinned = _refs(tmp_path, {"tpm": {"pcrs": {"7": [pcrs["sha256"][7].hex()]}}})
    assert runner.invoke(app, [*args, *pinned]).exit_code == 0
    moved = _refs(tmp_path, {"tpm": {"pcrs": {"7": ["00" * 32]}}})
    result = runner.invoke(app, [*args, *moved])
    assert result.exit_code == 1
    assert "tpm.pcr7" in result.stderr
    (tmp_path / "bad.json").write_text('{"sha1": {}}')
    bad = runner.invoke(app, [*args[:8], str(tmp_path / "bad.json"), *args[9:]])
    assert bad.exit_code == 2


def test_verify_azure_cvm_on_a_synthetic_vm(amd: SyntheticAmd, tmp_path: Path) -> None:
    tpm = SyntheticTpm()
    claims = json.dumps({"keys": [tpm.jwk()]}).encode()
    key, vcek = amd.leaf(tcb=TCB, chip_id=CHIP)
    report = amd.report(
        key, tcb=TCB, chip_id=CHIP, report_data=hashlib.sha256(claims).digest() + bytes(32)
    )
    pcrs = {"sha256": {i: hashlib.sha256(bytes([i])).digest() for i in range(24)}}
    attest, signature = tpm.quote(nonce=b"a" * 32, pcrs=pcrs)
    evidence = {
        "version": 2,
        "hcl_report": base64.urlsafe_b64encode(hcl_report(report, claims)).decode().rstrip("="),
        "vcek": base64.b64encode(amd.der(vcek)).decode(),
        "tpm_quote": {
            "message": attest.hex(),
            "signature": signature.hex(),
            "pcrs": [pcrs["sha256"][i].hex() for i in range(24)],
        },
    }
    (tmp_path / "evidence.json").write_text(json.dumps(evidence))
    (tmp_path / "chain.pem").write_bytes(
        amd.ask.public_bytes(Encoding.PEM) + amd.ark.public_bytes(Encoding.PEM)
    )
    args = [
        "attest", "verify-azure-cvm", str(tmp_path / "evidence.json"), "--now", NOW,
        "--cert", str(tmp_path / "chain.pem"), "--ark-pin", f"Milan={amd.ark_pin}",
    ]  # fmt: skip
    ok = runner.invoke(app, [*args, "--nonce", (b"a" * 32).hex(), "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["snp"]["product"] == "Milan"
    wrong = runner.invoke(app, [*args, "--nonce", (b"b" * 32).hex()])
    assert wrong.exit_code == 1
    assert "extraData" in wrong.stderr
    (tmp_path / "broken.json").write_text(json.dumps({"hcl_report": "!"}))
    broken = runner.invoke(app, [*args[:2], str(tmp_path / "broken.json"), *args[3:]])
    assert broken.exit_code == 2


def test_recorded_vectors_through_the_cli(testvectors_dir: Path, tmp_path: Path) -> None:
    snp = testvectors_dir / "snp"
    if not snp.is_dir():
        pytest.skip(f"SEV-SNP test vectors not found under {testvectors_dir}")
    downloads = tmp_path / "kds"
    downloads.mkdir()
    for name in ("amd_milan_ask_ark_asvk.pem", "amd_genoa_ask_ark_asvk.pem", "milan_vcek.der"):
        (downloads / name).write_bytes((snp / name).read_bytes())
    cache = tmp_path / "cache"
    filled = runner.invoke(
        app, ["attest", "snp-cache", "fill", str(downloads), "--cache", str(cache), "--json"]
    )
    assert filled.exit_code == 0, filled.stdout
    assert "Milan/ark.der" in json.loads(filled.stdout)["stored"]
    report = str(snp / "milan_vcek_report.bin")
    ok = runner.invoke(app, ["attest", "verify-snp", report, "--cache", str(cache), "--now", NOW])
    assert ok.exit_code == 0, ok.stderr
    genoa = runner.invoke(
        app,
        ["attest", "verify-snp", report, "--now", NOW,
         "--cert", str(snp / "milan_vcek.der"), "--cert", str(snp / "amd_genoa_ask_ark_asvk.pem")],
    )  # fmt: skip
    assert genoa.exit_code == 1
    azure = runner.invoke(
        app,
        ["attest", "verify-azure-cvm", str(testvectors_dir / "azure-snp-vtpm" / "evidence.json"),
         "--cache", str(cache), "--now", NOW, "--nonce", AZURE_NONCE, "--json"],
    )  # fmt: skip
    assert azure.exit_code == 0, azure.stderr
    assert json.loads(azure.stdout)["nonce"] == AZURE_NONCE
    (downloads / "junk.txt").write_text("hello")
    refused = runner.invoke(
        app, ["attest", "snp-cache", "fill", str(downloads), "--cache", str(cache)]
    )
    assert refused.exit_code == 1
    assert "junk.txt" in refused.stdout
