"""Real AMD SEV-SNP reports and an Azure CVM's evidence (../shared/testvectors), verified
offline at times inside their certificates' windows; every tampering gives the fixed error."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from pathlib import Path

import pytest

from sealserve.attest import (
    ARK_SPKI_SHA256,
    FORMAT_SEV_SNP,
    Policy,
    ReferenceValues,
    SnpAnchors,
    SnpReference,
    TpmSignature,
    TrustAnchors,
    verify_azure_cvm,
    verify_evidence,
    verify_snp,
)
from sealserve.attest._amd import GUID_ARK, GUID_ASK, GUID_VCEK, build_cert_table
from sealserve.attest._certs import Rejected, load_certificates, spki_sha256
from sealserve.attest._snp import check_snp
from sealserve.attest.tee import snp_evidence
from sealserve.errors import AttestationError

IN_WINDOW = int(datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC).timestamp())
AFTER_VLEK = int(datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC).timestamp())
MEASUREMENT = (
    "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c"
    "23500644e0e692e6be917f9050d3d38c"
)
REPORT_DATA = bytes.fromhex(
    "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
) + bytes(32)
AZURE_NONCE = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a"
    "a398f647caa2338748cd0fd9f5f819ef"
)
MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


@dataclasses.dataclass(frozen=True)
class Vectors:
    vcek_report: bytes
    vcek: bytes
    vlek_report: bytes
    vlek: bytes
    chains: dict[str, bytes]
    azure: dict[str, object]


@pytest.fixture(scope="module")
def vectors(testvectors_dir: Path) -> Vectors:
    snp = testvectors_dir / "snp"
    if not snp.is_dir() or not (testvectors_dir / "azure-snp-vtpm").is_dir():
        pytest.skip(f"SEV-SNP test vectors not found under {testvectors_dir}")
    return Vectors(
        vcek_report=(snp / "milan_vcek_report.bin").read_bytes(),
        vcek=(snp / "milan_vcek.der").read_bytes(),
        vlek_report=(snp / "milan_vlek_report.bin").read_bytes(),
        vlek=(snp / "milan_vlek.der").read_bytes(),
        chains={
            p: (snp / f"amd_{p.lower()}_ask_ark_asvk.pem").read_bytes()
            for p in ("Milan", "Genoa", "Turin")
        },
        azure=json.loads((testvectors_dir / "azure-snp-vtpm" / "evidence.json").read_text()),
    )


def test_the_pins_are_the_recorded_arks(vectors: Vectors) -> None:
    # The pins in the code are AMD's ARKs: each product line's recorded chain holds its ARK.
    for product, chain in vectors.chains.items():
        (ark,) = [c for c in load_certificates(chain) if c.subject == c.issuer]
        assert spki_sha256(ark) == ARK_SPKI_SHA256[product]


def test_vcek_report_verifies_with_its_chain(vectors: Vectors) -> None:
    # Loading the VCEK (serial number 0) raises no warning: warnings are errors here.
    att = verify_snp(
        vectors.vcek_report, now=IN_WINDOW, certificates=[vectors.vcek, vectors.chains["Milan"]]
    )
    assert att.product == "Milan"
    assert att.report.version == 2
    assert att.report.signing_key == "vcek"
    assert att.report.vmpl == 0
    assert att.report.policy == 0x3001F
    assert not att.report.debug
    assert att.report.reported_tcb.hex() == "0300000000000873"
    assert att.tcb.components() == MILAN_TCB
    assert att.report.measurement.hex() == MEASUREMENT
    assert att.report.report_data == REPORT_DATA
    assert att.report.host_data == bytes(32)
    # The same, with the chain held by the verifier (its cache) instead of the evidence.
    cached = SnpAnchors(certificates=(vectors.chains["Milan"],))
    assert (
        verify_snp(
            vectors.vcek_report, now=IN_WINDOW, anchors=cached, certificates=[vectors.vcek]
        ).product
        == "Milan"
    )


def test_vlek_report_verifies_inside_its_window_only(vectors: Vectors) -> None:
    att = verify_snp(
        vectors.vlek_report, now=IN_WINDOW, certificates=[vectors.vlek, vectors.chains["Milan"]]
    )
    assert att.report.version == 3
    assert att.report.signing_key == "vlek"
    assert att.report.vmpl == 1
    assert att.report.cpuid == (0x19, 0x01, 0x01)
    with pytest.raises(AttestationError):  # the VLEK expired on 2025-12-10
        verify_snp(
            vectors.vlek_report,
            now=AFTER_VLEK,
            certificates=[vectors.vlek, vectors.chains["Milan"]],
        )


@pytest.mark.parametrize(
    ("report", "leaf", "chain", "now", "reason"),
    [
        pytest.param("vcek_report", "vcek", "Genoa", IN_WINDOW, "no ARK", id="milan-under-genoa"),
        pytest.param("vcek_report", "vcek", "Turin", IN_WINDOW, "no ARK", id="milan-under-turin"),
        pytest.param("vlek_report", "vcek", "Milan", IN_WINDOW, "no VLEK", id="vlek-vs-vcek"),
        pytest.param("vcek_report", "vlek", "Milan", IN_WINDOW, "no VCEK", id="vcek-vs-vlek"),
        pytest.param("vcek_report", "vcek", "Milan", 1_600_000_000, "not valid", id="too-early"),
        pytest.param("vcek_report", "vcek", "Milan", 1_900_000_000, "not valid", id="expired"),
    ],
)
def test_wrong_chains_keys_and_times_are_refused(
    vectors: Vectors, report: str, leaf: str, chain: str, now: int, reason: str
) -> None:
    certs = [getattr(vectors, leaf), vectors.chains[chain]]
    with pytest.raises(Rejected, match=reason):
        check_snp(getattr(vectors, report), now=now, certificates=certs)
    with pytest.raises(AttestationError):
        verify_snp(getattr(vectors, report), now=now, certificates=certs)


def test_no_chain_or_another_pin_is_refused(vectors: Vectors) -> None:
    with pytest.raises(AttestationError):  # the VCEK alone: no ASK, no ARK
        verify_snp(vectors.vcek_report, now=IN_WINDOW, certificates=[vectors.vcek])
    genoa_pin_for_milan = SnpAnchors(ark_pins={"Milan": ARK_SPKI_SHA256["Genoa"]})
    with pytest.raises(AttestationError):
        verify_snp(
            vectors.vcek_report,
            now=IN_WINDOW,
            anchors=genoa_pin_for_milan,
            certificates=[vectors.vcek, vectors.chains["Milan"]],
        )


def test_every_flipped_byte_of_the_signed_region_is_refused(vectors: Vectors) -> None:
    certs = [vectors.vcek, vectors.chains["Milan"]]
    verify_snp(vectors.vcek_report, now=IN_WINDOW, certificates=certs)
    for offset in range(0x2A0):
        tampered = bytearray(vectors.vcek_report)
        tampered[offset] ^= 0x01
        with pytest.raises(AttestationError):
            verify_snp(bytes(tampered), now=IN_WINDOW, certificates=certs)
    for offset in (0x2A0, 0x2E8, 0x330, 0x49F):  # r, s and the reserved rest of the signature
        tampered = bytearray(vectors.vcek_report)
        tampered[offset] ^= 0x01
        with pytest.raises(AttestationError):
            verify_snp(bytes(tampered), now=IN_WINDOW, certificates=certs)


def _trust() -> TrustAnchors:
    return TrustAnchors(simulated_platform_keys=frozenset(), accept_dcap=False)


def _table(vectors: Vectors) -> bytes:
    ask, ark, _asvk = load_certificates(vectors.chains["Milan"])
    from cryptography.hazmat.primitives.serialization import Encoding

    return build_cert_table(
        [
            (GUID_VCEK, vectors.vcek),
            (GUID_ASK, ask.public_bytes(Encoding.DER)),
            (GUID_ARK, ark.public_bytes(Encoding.DER)),
        ]
    )


def _policy(**snp: object) -> Policy:
    reference = {"min_tcb": {"Milan": MILAN_TCB}, **snp}
    return Policy(
        measurements=frozenset({MEASUREMENT}),
        reference_values=(ReferenceValues(snp=SnpReference(**reference)),),  # type: ignore[arg-type]
    )


def test_evidence_and_policy_on_the_vcek_report(vectors: Vectors) -> None:
    evidence = snp_evidence(vectors.vcek_report, cert_table=_table(vectors))
    assert evidence.format == FORMAT_SEV_SNP
    claims = verify_evidence(
        evidence, _policy(), report_data=REPORT_DATA, trust=_trust(), now=IN_WINDOW
    )
    assert claims.measurement == MEASUREMENT
    assert claims.snp is not None
    refused = [
        # another measurement, in the grant or in the reference values
        Policy(
            measurements=frozenset({"00" * 48}),
            reference_values=_policy().reference_values,
        ),
        _policy(measurements=["11" * 48]),
        # a TCB above the report's: the bootloader SPL 3 < 4 (a "lowered" TCB, seen from
        # the policy's side)
        _policy(min_tcb={"Milan": {**MILAN_TCB, "bootloader": 4}}),
        _policy(min_tcb={"Genoa": MILAN_TCB}),  # no minimum for Milan: refused
        _policy(host_data=["ff" * 32]),
        _policy(vmpls=[1]),
        _policy(allow_smt=False),  # the host runs with SMT on
        _policy(signing_keys=["vlek"]),
        _policy(products=["Genoa"]),
        _policy(min_guest_svn=5),  # the guest's SVN is 4
        # no reference values at all: SEV-SNP evidence needs a minimum TCB
        Policy(measurements=frozenset({MEASUREMENT})),
    ]
    for policy in refused:
        with pytest.raises(AttestationError):
            verify_evidence(
                evidence, policy, report_data=REPORT_DATA, trust=_trust(), now=IN_WINDOW
            )
    with pytest.raises(AttestationError):  # report_data binds another key or nonce
        verify_evidence(evidence, _policy(), report_data=bytes(64), trust=_trust(), now=IN_WINDOW)
    with pytest.raises(AttestationError):  # a verifier that refuses SEV-SNP
        verify_evidence(
            evidence,
            _policy(),
            report_data=REPORT_DATA,
            trust=TrustAnchors(snp=None),
            now=IN_WINDOW,
        )


def _azure_parts(vectors: Vectors) -> tuple[bytes, bytes, bytes, TpmSignature, dict]:  # type: ignore[type-arg]
    doc = vectors.azure
    text = str(doc["hcl_report"])
    hcl = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    vcek_text = str(doc["vcek"])
    vcek = base64.urlsafe_b64decode(vcek_text + "=" * (-len(vcek_text) % 4))
    quote = doc["tpm_quote"]
    assert isinstance(quote, dict)
    pcrs = {"sha256": {i: bytes.fromhex(v) for i, v in enumerate(quote["pcrs"])}}
    signature = TpmSignature(
        scheme="rsassa", hash="sha256", signature=bytes.fromhex(quote["signature"])
    )
    return hcl, vcek, bytes.fromhex(quote["message"]), signature, pcrs


def test_the_azure_cvm_chain_verifies(vectors: Vectors) -> None:
    hcl, vcek, attest, signature, pcrs = _azure_parts(vectors)
    anchors = SnpAnchors(certificates=(vectors.chains["Milan"],))
    verified = verify_azure_cvm(
        hcl,
        attest=attest,
        signature=signature,
        pcrs=pcrs,
        nonce=AZURE_NONCE,
        now=IN_WINDOW,
        anchors=anchors,
        certificates=[vcek],
    )
    assert verified.snp.product == "Milan"
    assert verified.snp.report.version == 3
    assert verified.quote.extra_data == AZURE_NONCE
    assert set(verified.pcrs["sha256"]) == set(range(24))
    assert verified.claims["vm-configuration"]["secure-boot"] is True


def test_every_link_of_the_azure_chain_is_checked(vectors: Vectors) -> None:
    hcl, vcek, attest, signature, pcrs = _azure_parts(vectors)
    anchors = SnpAnchors(certificates=(vectors.chains["Milan"],))
    good = {
        "attest": attest,
        "signature": signature,
        "pcrs": pcrs,
        "nonce": AZURE_NONCE,
        "now": IN_WINDOW,
        "anchors": anchors,
        "certificates": [vcek],
    }

    def refused(hcl_report: bytes = hcl, **changes: object) -> None:
        with pytest.raises(AttestationError):
            verify_azure_cvm(hcl_report, **{**good, **changes})  # type: ignore[arg-type]

    refused(nonce=bytes(48))  # a wrong nonce
    refused(anchors=SnpAnchors(certificates=(vectors.chains["Genoa"],)))  # the Genoa chain
    refused(now=AFTER_VLEK + 10**9)  # long after every certificate
    refused(certificates=[])  # no VCEK
    changed = {"sha256": {**pcrs["sha256"], 7: bytes(32)}}
    refused(pcrs=changed)  # a PCR value the quote did not vouch for
    # Every byte of the SNP report's signed region, and of the runtime data and claims (the
    # HCL header after its magic is signed by nothing and used for nothing; the bytes after
    # the claims are padding, outside every structure).
    claims_end = 0x4D4 + int.from_bytes(hcl[0x4D0:0x4D4], "little")
    for offset in [*range(0x20, 0x20 + 0x2A0), *range(0x4C0, claims_end)]:
        tampered = bytearray(hcl)
        tampered[offset] ^= 0x01
        refused(bytes(tampered))
    for offset in range(0, len(attest), 7):  # the quote
        tampered = bytearray(attest)
        tampered[offset] ^= 0x01
        refused(attest=bytes(tampered))
    flipped = bytearray(signature.signature)
    flipped[10] ^= 0x01
    refused(signature=TpmSignature(scheme="rsassa", hash="sha256", signature=bytes(flipped)))
