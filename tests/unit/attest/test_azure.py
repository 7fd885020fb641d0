"""The Azure CVM chain on evidence the test builds itself: a test AMD hierarchy signs the SNP
report inside an HCL report whose runtime claims hold a test vTPM's AK, which signs the quote."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

from sealserve.attest import (
    Evidence,
    Policy,
    ReferenceValues,
    SnpReference,
    TpmQuote,
    TpmReference,
    TpmSignature,
    TrustAnchors,
    report_data_for,
    tpm_qualifying_data,
    verify_evidence,
)
from sealserve.attest._azure import HclReport, check_azure_cvm
from sealserve.attest._certs import Rejected
from sealserve.attest._hw_evidence import AzureBundle
from sealserve.attest._synthetic import SyntheticAmd, SyntheticTpm, azure_evidence, hcl_report
from sealserve.errors import AttestationError

NOW = 1_750_000_000
TCB = {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
PCRS = {"sha256": {i: hashlib.sha256(b"pcr %d" % i).digest() for i in range(24)}}


@pytest.fixture(scope="module")
def amd() -> SyntheticAmd:
    return SyntheticAmd("Genoa")


@pytest.fixture(scope="module")
def vtpm() -> SyntheticTpm:
    return SyntheticTpm()


def _claims(tpm: SyntheticTpm, **extra: Any) -> bytes:
    doc = {"keys": [tpm.jwk()], "vm-configuration": {"secure-boot": True}, **extra}
    return json.dumps(doc).encode()


def _hcl(amd: SyntheticAmd, claims: bytes, *, bound: bytes | None = None) -> tuple[bytes, bytes]:
    key, vcek = amd.leaf(tcb=TCB, chip_id=bytes(64))
    report_data = hashlib.sha256(claims if bound is None else bound).digest() + bytes(32)
    report = amd.report(key, tcb=TCB, report_data=report_data)
    return hcl_report(report, claims), amd.der(vcek)


def _verify(amd: SyntheticAmd, tpm: SyntheticTpm, hcl: bytes, vcek: bytes, **changes: Any):  # type: ignore[no-untyped-def]
    nonce = b"z" * 32
    attest, signature = tpm.quote(nonce=nonce, pcrs=PCRS)
    args: dict[str, Any] = {
        "attest": attest,
        "signature": TpmSignature.parse(signature),
        "pcrs": PCRS,
        "nonce": nonce,
        "now": NOW,
        "anchors": amd.anchors(),
        "certificates": [vcek],
        **changes,
    }
    return check_azure_cvm(hcl, **args)


def test_the_chain_verifies(amd: SyntheticAmd, vtpm: SyntheticTpm) -> None:
    hcl, vcek = _hcl(amd, _claims(vtpm))
    verified = _verify(amd, vtpm, hcl, vcek)
    assert verified.snp.product == "Genoa"
    assert verified.claims["vm-configuration"] == {"secure-boot": True}
    assert set(verified.pcrs["sha256"]) == set(range(24))


def test_each_link_is_checked(amd: SyntheticAmd, vtpm: SyntheticTpm) -> None:
    claims = _claims(vtpm)
    hcl, vcek = _hcl(amd, claims)
    # The report binds other claims than those in the HCL report.
    other, other_vcek = _hcl(amd, claims, bound=_claims(SyntheticTpm()))
    with pytest.raises(Rejected, match="hash of the runtime claims"):
        _verify(amd, vtpm, other, other_vcek)
    # Claims without the AK, with two, or with one that is not RSA.
    for bad in (
        json.dumps({"keys": []}).encode(),
        json.dumps({"keys": [vtpm.jwk(), vtpm.jwk()]}).encode(),
        json.dumps({"keys": [{**vtpm.jwk(), "kty": "EC"}]}).encode(),
        json.dumps({"keys": [{**vtpm.jwk(), "n": "AQAB"}]}).encode(),
        b"[1, 2]",
        b"\xff\xfe",
    ):
        bad_hcl, bad_vcek = _hcl(amd, bad)
        with pytest.raises(Rejected):
            _verify(amd, vtpm, bad_hcl, bad_vcek)
    # The quote signed by another key than the claims' AK.
    with pytest.raises(Rejected, match="does not verify with the AK"):
        _verify(amd, SyntheticTpm(), hcl, vcek)
    # A wrong nonce, a PCR the quote does not vouch for.
    with pytest.raises(Rejected, match="extraData"):
        _verify(amd, vtpm, hcl, vcek, nonce=b"y" * 32)
    with pytest.raises(Rejected, match="PCR digest"):
        _verify(amd, vtpm, hcl, vcek, pcrs={"sha256": {**PCRS["sha256"], 0: bytes(32)}})
    # Another AMD hierarchy (its ARK is not the one pinned).
    with pytest.raises(Rejected):
        _verify(amd, vtpm, hcl, vcek, anchors=SyntheticAmd("Genoa").anchors())


def test_hcl_report_layout() -> None:
    claims = b'{"keys": []}'
    snp = bytes(1184)
    parsed = HclReport.parse(hcl_report(snp, claims, hash_type=2))
    assert parsed.claims_json == claims
    assert parsed.hash_name == "sha384"
    good = hcl_report(snp, claims)
    cases = {
        "no HCLA": b"XCLA" + good[4:],
        "a TDX report": good[:0x4C8] + (4).to_bytes(4, "little") + good[0x4CC:],
        "hash type 9": good[:0x4CC] + (9).to_bytes(4, "little") + good[0x4D0:],
        "inconsistent": good[:0x4C0] + (5).to_bytes(4, "little") + good[0x4C4:],
        "runtime data version 2": good[:0x4C4] + (2).to_bytes(4, "little") + good[0x4C8:],
        "run past": good[:-1],
        "bytes": good[:0x4C0],
    }
    for reason, data in cases.items():
        with pytest.raises(Rejected, match=reason):
            HclReport.parse(data)


def test_azure_evidence_needs_both_sections(amd: SyntheticAmd, vtpm: SyntheticTpm) -> None:
    report_data = report_data_for(os.urandom(32), os.urandom(32))
    evidence, _, _ = azure_evidence(amd, vtpm, report_data=report_data, pcrs=PCRS, tcb=TCB)
    evidence = Evidence.from_bytes(evidence.to_bytes())
    assert evidence.format == "azure-snp-vtpm"
    trust = TrustAnchors(snp=amd.anchors())
    snp = SnpReference(min_tcb={"Genoa": TCB})
    tpm = TpmReference(pcrs={i: {PCRS["sha256"][i].hex()} for i in range(8)})
    policy = Policy(reference_values=(ReferenceValues(snp=snp, tpm=tpm),))
    claims = verify_evidence(evidence, policy, report_data=report_data, trust=trust, now=NOW)
    assert claims.snp is not None
    assert claims.pcrs is not None
    for refused in (
        Policy(
            reference_values=(ReferenceValues(snp=snp, tpm=tpm, name="x"),),
            measurements=frozenset({"11" * 48}),
        ),
        Policy(reference_values=(ReferenceValues(tpm=tpm),), measurements=frozenset({"00" * 48})),
        Policy(
            reference_values=(
                ReferenceValues(snp=SnpReference(min_tcb={"Genoa": {"snp": 25}}), tpm=tpm),
            )
        ),
        Policy(measurements=frozenset({"00" * 48})),
    ):
        with pytest.raises(AttestationError):
            verify_evidence(evidence, refused, report_data=report_data, trust=trust, now=NOW)
    # Two documents, one per image: either may match.
    other_image = ReferenceValues(tpm=TpmReference(pcrs={0: {"00" * 32}}), snp=snp)
    either = Policy(reference_values=(other_image, ReferenceValues(snp=snp, tpm=tpm)))
    verify_evidence(evidence, either, report_data=report_data, trust=trust, now=NOW)
    # The report_data is bound through the quote's extraData: evidence claiming another one
    # (with the same quote) binds nothing.
    bundle = AzureBundle.from_raw(evidence.raw)
    assert bundle.report_data == report_data
    other = os.urandom(64)
    forged = Evidence(
        format="azure-snp-vtpm",
        measurement=evidence.measurement,
        report_data=other,
        raw=AzureBundle(
            hcl_report=bundle.hcl_report,
            attest=bundle.attest,
            signature=bundle.signature,
            report_data=other,
            pcrs=bundle.pcrs,
            certificates=bundle.certificates,
        ).to_raw(),
        debug=False,
    )
    with pytest.raises(AttestationError):
        verify_evidence(forged, policy, report_data=other, trust=trust, now=NOW)
    assert tpm_qualifying_data(report_data) == TpmQuote.parse(bundle.attest).extra_data
