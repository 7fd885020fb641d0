"""The hardware evidence parsers and verifiers on any bytes: only the fixed error, never another
exception; and no flipped bit of valid evidence ever verifies."""

from __future__ import annotations

import contextlib
import hashlib
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sealserve.attest import (
    FORMAT_AZURE_SNP_VTPM,
    FORMAT_SEV_SNP,
    FORMAT_TPM_QUOTE,
    Evidence,
    Policy,
    ReferenceValues,
    SnpReference,
    TpmReference,
    TrustAnchors,
    report_data_for,
    verify_evidence,
)
from sealserve.attest._amd import parse_cert_table
from sealserve.attest._azure import HclReport, check_azure_cvm
from sealserve.attest._certs import Rejected
from sealserve.attest._hw_evidence import AzureBundle, TpmBundle
from sealserve.attest._snp import SnpReport, check_snp
from sealserve.attest._synthetic import SyntheticAmd, SyntheticTpm, azure_evidence, tpms_attest
from sealserve.attest._tpm import TpmQuote, TpmSignature, check_quote
from sealserve.crypto import canonical_encode
from sealserve.errors import AttestationError

NOW = 1_750_000_000
TCB = {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 4}
PCRS = {"sha256": {i: hashlib.sha256(bytes([i])).digest() for i in range(8)}}
SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


class World:
    def __init__(self) -> None:
        self.amd = SyntheticAmd("Milan")
        self.tpm = SyntheticTpm()
        self.report_data = report_data_for(os.urandom(32), os.urandom(32))
        key, vcek = self.amd.leaf(tcb=TCB, chip_id=bytes(64))
        report = self.amd.report(key, tcb=TCB, report_data=self.report_data)
        self.snp = self.amd.snp_evidence(report, vcek)
        self.tpm_evidence = self.tpm.evidence(report_data=self.report_data, pcrs=PCRS)
        self.azure, _, _ = azure_evidence(
            self.amd, self.tpm, report_data=self.report_data, pcrs=PCRS, tcb=TCB
        )
        # The evidence must bring its own chain: every byte of it counts.
        # SEV-SNP evidence must bring its own chain (every byte of it counts); an Azure CVM's
        # brings the VCEK only, as Azure's does, and the verifier holds the ASK and ARK.
        self.trust = TrustAnchors(snp=self.amd.anchors(with_chain=False), tpm=self.tpm.anchors())
        self.azure_trust = TrustAnchors(snp=self.amd.anchors(), tpm=self.tpm.anchors())
        snp = SnpReference(min_tcb={"Milan": TCB})
        tpm = TpmReference(pcrs={0: {PCRS["sha256"][0].hex()}})
        self.policy = Policy(
            reference_values=(
                ReferenceValues(snp=snp, tpm=tpm),
                ReferenceValues(snp=SnpReference(min_tcb={"Milan": TCB}, measurements={"00" * 48})),
                ReferenceValues(tpm=tpm),
            ),
        )


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def _only_rejected(parse, data: bytes) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(Rejected):
        parse(data)


@SETTINGS
@given(data=st.binary(max_size=3000))
def test_parsers_raise_only_rejected(data: bytes) -> None:
    for parse in (
        SnpReport.parse,
        TpmQuote.parse,
        TpmSignature.parse,
        HclReport.parse,
        parse_cert_table,
        TpmBundle.from_raw,
        AzureBundle.from_raw,
        lambda d: check_snp(d, now=NOW, certificates=[d]),
    ):
        _only_rejected(parse, data)


@SETTINGS
@given(data=st.binary(min_size=1184, max_size=1184), cert=st.binary(max_size=2000))
def test_report_shaped_bytes_raise_only_rejected(data: bytes, cert: bytes) -> None:
    with_version = bytearray(data)
    with_version[0:4] = (2).to_bytes(4, "little")
    with_version[0x34:0x38] = (1).to_bytes(4, "little")
    _only_rejected(lambda d: check_snp(d, now=NOW, certificates=[cert]), bytes(with_version))


@SETTINGS
@given(
    nonce=st.binary(max_size=80),
    banks=st.lists(
        st.tuples(st.sampled_from(["sha256", "sha384", "sha512"]), st.lists(st.integers(0, 23))),
        max_size=3,
    ),
    digest=st.binary(max_size=70),
    signature=st.binary(max_size=600),
)
def test_quote_shaped_bytes_raise_only_rejected(
    world: World, nonce: bytes, banks: list[tuple[str, list[int]]], digest: bytes, signature: bytes
) -> None:
    attest = tpms_attest(nonce=nonce, selection=banks, digest=digest)
    sig = TpmSignature(scheme="rsassa", hash="sha256", signature=signature)
    for candidate in (sig, TpmSignature.parse(world.tpm.sign(attest))):
        with contextlib.suppress(Rejected):
            check_quote(
                attest, candidate, ak_public=world.tpm.ak_key.public_key(), pcrs=PCRS, nonce=nonce
            )


@SETTINGS
@given(
    fmt=st.sampled_from([FORMAT_SEV_SNP, FORMAT_TPM_QUOTE, FORMAT_AZURE_SNP_VTPM]),
    raw=st.binary(max_size=3000),
    collateral=st.none() | st.binary(max_size=500),
)
def test_any_wire_evidence_gives_only_the_fixed_error(
    world: World, fmt: str, raw: bytes, collateral: bytes | None
) -> None:
    fields: dict[str, str | int | bytes] = {"format": fmt, "raw": raw}
    if collateral is not None:
        fields["collateral"] = collateral
    try:
        evidence = Evidence.from_bytes(canonical_encode(fields))
        verify_evidence(
            evidence,
            world.policy,
            report_data=world.report_data,
            trust=world.trust,
            now=NOW,
        )
    except AttestationError:
        return
    pytest.fail("random bytes verified")  # pragma: no cover


@SETTINGS
@given(which=st.sampled_from(["snp", "tpm", "azure"]), data=st.data())
def test_no_flipped_bit_of_valid_evidence_verifies(
    world: World, which: str, data: st.DataObject
) -> None:
    evidence = {"snp": world.snp, "tpm": world.tpm_evidence, "azure": world.azure}[which]
    trust = world.azure_trust if which == "azure" else world.trust
    wire = evidence.to_bytes()
    verify_evidence(
        Evidence.from_bytes(wire), world.policy, report_data=world.report_data, trust=trust, now=NOW
    )
    bit = data.draw(st.integers(0, len(wire) * 8 - 1), label="bit")
    if which == "azure":
        # The HCL report's header after its magic is signed by nothing and used for nothing
        # (sealserve.attest._azure): flipping it changes nothing that is believed.
        header = wire.index(AzureBundle.from_raw(world.azure.raw).hcl_report) + 4
        assume(not header <= bit // 8 < header + 28)
    flipped = bytearray(wire)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(AttestationError):
        verify_evidence(
            Evidence.from_bytes(bytes(flipped)),
            world.policy,
            report_data=world.report_data,
            trust=trust,
            now=NOW,
        )


@SETTINGS
@given(claims=st.binary(max_size=1200), nonce=st.binary(max_size=64))
def test_azure_chain_on_any_claims(world: World, claims: bytes, nonce: bytes) -> None:
    from sealserve.attest._synthetic import hcl_report

    key, vcek = world.amd.leaf(tcb=TCB, chip_id=bytes(64))
    report = world.amd.report(key, tcb=TCB, report_data=hashlib.sha256(claims).digest() + bytes(32))
    attest, signature = world.tpm.quote(nonce=nonce, pcrs=PCRS)
    try:
        check_azure_cvm(
            hcl_report(report, claims),
            attest=attest,
            signature=TpmSignature.parse(signature),
            pcrs=PCRS,
            nonce=nonce,
            now=NOW,
            anchors=world.amd.anchors(),
            certificates=[world.amd.der(vcek)],
        )
    except Rejected:
        return
    pytest.fail("claims without the AK verified")  # pragma: no cover
