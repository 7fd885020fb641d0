"""The TPM quote verifier on quotes the test makes itself (TPMS_ATTEST and TPMT_SIGNATURE in
the real layouts, an AK certified by a CA generated here): every check and every refusal."""

from __future__ import annotations

import hashlib
import os

import pytest

from sealserve.attest import (
    Evidence,
    Policy,
    ReferenceValues,
    TpmQuote,
    TpmReference,
    TpmSignature,
    TrustAnchors,
    report_data_for,
    tpm_qualifying_data,
    verify_evidence,
    verify_tpm,
)
from sealserve.attest._certs import Rejected
from sealserve.attest._hw_evidence import TpmBundle
from sealserve.attest._synthetic import SyntheticTpm, tpms_attest
from sealserve.attest._tpm import check_tpm, pcr_digest
from sealserve.errors import AttestationError

NOW = 1_750_000_000
PCRS = {"sha256": {i: hashlib.sha256(b"pcr %d" % i).digest() for i in range(24)}}
BOOT = [("sha256", list(range(8)))]


@pytest.fixture(scope="module", params=["rsassa", "rsapss", "ecdsa"])
def tpm(request: pytest.FixtureRequest) -> SyntheticTpm:
    return SyntheticTpm(scheme=request.param)


def _check(tpm: SyntheticTpm, attest: bytes, signature: bytes, **changes: object):  # type: ignore[no-untyped-def]
    args = {
        "pcrs": PCRS,
        "nonce": b"n" * 32,
        "now": NOW,
        "anchors": tpm.anchors(),
        "ak_chain": tpm.ak_chain,
        **changes,
    }
    return check_tpm(attest, signature, **args)  # type: ignore[arg-type]


def test_a_quote_verifies_with_each_scheme(tpm: SyntheticTpm) -> None:
    attest, signature = tpm.quote(nonce=b"n" * 32, pcrs=PCRS, selection=BOOT)
    verified = _check(tpm, attest, signature)
    assert set(verified.pcrs["sha256"]) == set(range(8))  # only the quoted PCRs
    assert verified.quote.pcr_digest == pcr_digest(BOOT, PCRS, "sha256")
    assert TpmSignature.parse(signature).scheme == tpm.scheme
    assert verified.summary()["nonce"] == (b"n" * 32).hex()


def test_each_part_of_a_quote_is_checked(tpm: SyntheticTpm) -> None:
    attest, signature = tpm.quote(nonce=b"n" * 32, pcrs=PCRS, selection=BOOT)
    with pytest.raises(Rejected, match="extraData is not the nonce"):
        _check(tpm, attest, signature, nonce=b"m" * 32)
    moved = {"sha256": {**PCRS["sha256"], 3: bytes(32)}}
    with pytest.raises(Rejected, match="PCR digest"):
        _check(tpm, attest, signature, pcrs=moved)
    missing = {"sha256": {i: v for i, v in PCRS["sha256"].items() if i != 5}}
    with pytest.raises(Rejected, match="no value for quoted PCR sha256:5"):
        _check(tpm, attest, signature, pcrs=missing)
    for offset in range(0, len(attest)):
        tampered = bytearray(attest)
        tampered[offset] ^= 0x01
        with pytest.raises(Rejected):
            _check(tpm, bytes(tampered), signature)
    with pytest.raises(Rejected, match="trailing"):
        _check(tpm, attest + b"\x00", signature)
    other = SyntheticTpm(scheme=tpm.scheme)
    with pytest.raises(Rejected, match=r"does not verify with the AK|not an"):
        _check(tpm, attest, other.sign(attest))


def test_the_structure_is_a_quote_made_by_a_tpm(tpm: SyntheticTpm) -> None:
    digest = pcr_digest(BOOT, PCRS, tpm.hash)
    cases = {
        "magic": tpms_attest(nonce=b"n" * 32, selection=BOOT, digest=digest, magic=0xFF544348),
        "type": tpms_attest(nonce=b"n" * 32, selection=BOOT, digest=digest, kind=0x8014),
        "qualifiedSigner": tpms_attest(
            nonce=b"n" * 32, selection=BOOT, digest=digest, signer=b"\x00\x0b" + bytes(31)
        ),
        "no PCR selected": tpms_attest(nonce=b"n" * 32, selection=[("sha256", [])], digest=digest),
        "safe": tpms_attest(nonce=b"n" * 32, selection=BOOT, digest=digest, clock=(1, 1, 1, 2)),
    }
    for reason, attest in cases.items():
        # Signed by the real AK: only the structure is wrong.
        with pytest.raises(Rejected, match=reason):
            _check(tpm, attest, tpm.sign(attest))


def test_the_ak_must_chain_to_a_trusted_root(tpm: SyntheticTpm) -> None:
    attest, signature = tpm.quote(nonce=b"n" * 32, pcrs=PCRS, selection=BOOT)
    with pytest.raises(Rejected, match="does not chain"):
        _check(tpm, attest, signature, anchors=SyntheticTpm().anchors())
    with pytest.raises(Rejected, match="not valid"):
        _check(tpm, attest, signature, now=2_500_000_000)
    with pytest.raises(Rejected, match="no AK certificate"):
        _check(tpm, attest, signature, ak_chain=())
    with pytest.raises(AttestationError):
        verify_tpm(
            attest,
            signature,
            pcrs=PCRS,
            nonce=b"m" * 32,
            now=NOW,
            anchors=tpm.anchors(),
            ak_chain=tpm.ak_chain,
        )


def test_signatures_the_verifier_refuses() -> None:
    tpm = SyntheticTpm()
    attest, _ = tpm.quote(nonce=b"n" * 32, pcrs=PCRS, selection=BOOT)
    good = TpmSignature.parse(tpm.sign(attest))
    sha1 = b"\x00\x14\x00\x04" + good.to_bytes()[4:]
    with pytest.raises(Rejected, match="hash"):
        TpmSignature.parse(sha1)
    hmac_sig = b"\x00\x05\x00\x0b" + good.to_bytes()[4:]
    with pytest.raises(Rejected, match="not RSASSA"):
        TpmSignature.parse(hmac_sig)
    # An RSASSA signature presented as RSAPSS, and the reverse.
    as_pss = TpmSignature(scheme="rsapss", hash="sha256", signature=good.signature)
    with pytest.raises(Rejected, match="does not verify"):
        _check(tpm, attest, as_pss.to_bytes())
    # An ECDSA signature against an RSA AK.
    ecdsa = SyntheticTpm(scheme="ecdsa")
    with pytest.raises(Rejected, match="not an EC key"):
        _check(tpm, attest, ecdsa.sign(attest))


def test_tpm_evidence_with_pinned_pcrs(tpm: SyntheticTpm) -> None:
    report_data = report_data_for(os.urandom(32), os.urandom(32))
    evidence = Evidence.from_bytes(
        tpm.evidence(report_data=report_data, pcrs=PCRS, selection=BOOT).to_bytes()
    )
    assert evidence.format == "tpm-quote"
    trust = TrustAnchors(tpm=tpm.anchors())
    pinned = {i: {PCRS["sha256"][i].hex()} for i in range(8)}
    policy = Policy(reference_values=(ReferenceValues(tpm=TpmReference(pcrs=pinned)),))
    claims = verify_evidence(evidence, policy, report_data=report_data, trust=trust, now=NOW)
    assert claims.measurement == pcr_digest(BOOT, PCRS, tpm.hash).hex()
    assert claims.tcb_status is None
    refused = [
        # PCR 0 may take another value only
        Policy(
            reference_values=(ReferenceValues(tpm=TpmReference(pcrs={**pinned, 0: {"00" * 32}})),)
        ),
        # PCR 9 pinned but not quoted
        Policy(
            reference_values=(
                ReferenceValues(tpm=TpmReference(pcrs={**pinned, 9: {PCRS["sha256"][9].hex()}})),
            )
        ),
        # the grant's measurement is another PCR digest
        Policy(measurements=frozenset({"00" * 32}), reference_values=policy.reference_values),
        # no reference values: a TPM quote needs pinned PCRs
        Policy(measurements=frozenset({claims.measurement})),
    ]
    for bad in refused:
        with pytest.raises(AttestationError):
            verify_evidence(evidence, bad, report_data=report_data, trust=trust, now=NOW)
    with pytest.raises(AttestationError):  # another key or nonce than the quote binds
        verify_evidence(evidence, policy, report_data=os.urandom(64), trust=trust, now=NOW)
    with pytest.raises(AttestationError):  # a verifier with no TPM roots
        verify_evidence(evidence, policy, report_data=report_data, trust=TrustAnchors(), now=NOW)
    # Evidence whose report_data is not what its quote binds.
    bundle = TpmBundle.from_raw(evidence.raw)
    swapped = TpmBundle(
        attest=bundle.attest,
        signature=bundle.signature,
        report_data=os.urandom(64),
        pcrs=bundle.pcrs,
        ak_chain=bundle.ak_chain,
    )
    forged = Evidence(
        format="tpm-quote",
        measurement=evidence.measurement,
        report_data=swapped.report_data,
        raw=swapped.to_raw(),
        debug=False,
    )
    with pytest.raises(AttestationError):
        verify_evidence(forged, policy, report_data=swapped.report_data, trust=trust, now=NOW)


def test_qualifying_data_is_the_sha256_of_report_data() -> None:
    report_data = os.urandom(64)
    assert tpm_qualifying_data(report_data) == hashlib.sha256(report_data).digest()
    with pytest.raises(ValueError, match="64 bytes"):
        tpm_qualifying_data(b"short")
    assert TpmQuote.parse(tpms_attest(nonce=b"x", selection=BOOT, digest=bytes(32))).selection == (
        ("sha256", tuple(range(8))),
    )
