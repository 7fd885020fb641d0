"""A live TPM: swtpm quotes with tpm2-tools, the TPM verifier checks them.

The AK is certified by swtpm's local CA after credential activation against the EK whose
certificate that CA issued (tests/integration/swtpm.py); the verifier trusts the local CA's root
and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.attest import (
    Evidence,
    Policy,
    ReferenceValues,
    TpmAnchors,
    TpmQuote,
    TpmReference,
    TrustAnchors,
    report_data_for,
    tpm_qualifying_data,
    verify_evidence,
    verify_tpm,
)
from sealserve.attest._hw_evidence import TpmBundle
from sealserve.attest._synthetic import SyntheticTpm
from sealserve.cli import app
from sealserve.errors import AttestationError
from tests.integration.swtpm import Ak, Swtpm

runner = CliRunner()


def _pcr_map(quote: bytes, values: bytes) -> dict[str, dict[int, bytes]]:
    selection = TpmQuote.parse(quote).selection
    out: dict[str, dict[int, bytes]] = {}
    at = 0
    for bank, indices in selection:
        for index in indices:
            out.setdefault(bank, {})[index] = values[at : at + 32]
            at += 32
    assert at == len(values)
    return out


@pytest.fixture(scope="module")
def anchors(swtpm: Swtpm) -> TpmAnchors:
    root, _ = swtpm.ca_certificates()
    return TpmAnchors(roots=(root,))


@pytest.fixture(scope="module", params=["rsassa", "rsapss", "ecdsa"])
def certified(request: pytest.FixtureRequest, swtpm: Swtpm) -> tuple[Ak, tuple[bytes, ...]]:
    ak = swtpm.create_ak(request.param)
    _, issuer = swtpm.ca_certificates()
    return ak, (swtpm.certify_ak(ak, now=int(time.time())), issuer)


def _evidence(swtpm: Swtpm, ak: Ak, chain: tuple[bytes, ...], report_data: bytes) -> Evidence:
    attest, signature, values = swtpm.quote(ak, nonce=tpm_qualifying_data(report_data))
    bundle = TpmBundle(
        attest=attest,
        signature=signature,
        report_data=report_data,
        pcrs=_pcr_map(attest, values),
        ak_chain=chain,
    )
    return Evidence.from_bytes(
        Evidence(
            format="tpm-quote",
            measurement=TpmQuote.parse(attest).pcr_digest,
            report_data=report_data,
            raw=bundle.to_raw(),
            debug=False,
        ).to_bytes()
    )


def test_a_swtpm_quote_verifies_and_pcrs_pin_it(
    swtpm: Swtpm, certified: tuple[Ak, tuple[bytes, ...]], anchors: TpmAnchors
) -> None:
    ak, chain = certified
    now = int(time.time())
    report_data = report_data_for(os.urandom(32), os.urandom(32))
    evidence = _evidence(swtpm, ak, chain, report_data)
    claims_pcrs = TpmBundle.from_raw(evidence.raw).pcrs["sha256"]
    pinned = ReferenceValues(tpm=TpmReference(pcrs={i: {claims_pcrs[i].hex()} for i in range(8)}))
    trust = TrustAnchors(tpm=anchors)
    policy = Policy(reference_values=(pinned,))
    claims = verify_evidence(evidence, policy, report_data=report_data, trust=trust, now=now)
    assert claims.format == "tpm-quote"
    assert claims.pcrs is not None
    assert set(claims.pcrs["sha256"]) == set(range(8))

    # Another nonce (report_data) than the one the quote carries: the fixed error.
    other = report_data_for(os.urandom(32), os.urandom(32))
    with pytest.raises(AttestationError):
        verify_evidence(evidence, policy, report_data=other, trust=trust, now=now)
    # Without the local CA as a root, the AK is nobody's: no TPM roots, or another CA's.
    for untrusting in (TrustAnchors(), TrustAnchors(tpm=SyntheticTpm().anchors())):
        with pytest.raises(AttestationError):
            verify_evidence(evidence, policy, report_data=report_data, trust=untrusting, now=now)
    # A PCR that moves (something else was measured into PCR 7): the pin refuses it.
    swtpm.extend(7, hashlib.sha256(b"another boot component").digest())
    moved = _evidence(swtpm, ak, chain, report_data)
    with pytest.raises(AttestationError):
        verify_evidence(moved, policy, report_data=report_data, trust=trust, now=now)
    # ...while a policy pinning PCRs 0-6 only still admits it.
    loose = Policy(
        reference_values=(
            ReferenceValues(tpm=TpmReference(pcrs={i: {claims_pcrs[i].hex()} for i in range(7)})),
        )
    )
    verify_evidence(moved, loose, report_data=report_data, trust=trust, now=now)


def test_verify_tpm_and_the_cli_on_tpm2_tools_files(
    swtpm: Swtpm, certified: tuple[Ak, tuple[bytes, ...]], anchors: TpmAnchors, tmp_path: Path
) -> None:
    ak, chain = certified
    nonce = os.urandom(32)
    attest, signature, values = swtpm.quote(ak, nonce=nonce)
    now = int(time.time())
    verified = verify_tpm(
        attest,
        signature,
        pcrs=_pcr_map(attest, values),
        nonce=nonce,
        now=now,
        anchors=anchors,
        ak_chain=chain,
    )
    assert verified.quote.extra_data == nonce
    with pytest.raises(AttestationError):
        verify_tpm(
            attest,
            signature,
            pcrs=_pcr_map(attest, values),
            nonce=os.urandom(32),
            now=now,
            anchors=anchors,
            ak_chain=chain,
        )

    files = {"msg": attest, "sig": signature, "pcrs": values, "ak": chain[0], "ca": chain[1]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    root, _ = swtpm.ca_certificates()
    (tmp_path / "root.pem").write_bytes(root)
    args = [
        "attest", "verify-tpm", str(tmp_path / "msg"), str(tmp_path / "sig"),
        "--pcrs", str(tmp_path / "pcrs"), "--nonce", nonce.hex(), "--now", str(now),
        "--ak-cert", str(tmp_path / "ak"), "--ak-cert", str(tmp_path / "ca"),
        "--root", str(tmp_path / "root.pem"), "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["nonce"] == nonce.hex()
    wrong = runner.invoke(app, [*args[:7], os.urandom(32).hex(), *args[8:]])
    assert wrong.exit_code == 1
    assert "extraData" in wrong.stderr
