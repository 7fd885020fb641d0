"""The SEV-SNP verifier on reports the test signs itself (a test ARK/ASK/VCEK chain generated
here, reports in the ABI's layout), so it runs on a fresh clone: every check, every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from sealserve.attest import (
    Policy,
    ReferenceValues,
    SnpAnchors,
    SnpReference,
    TcbVersion,
    TrustAnchors,
    verify_evidence,
    verify_snp,
)
from sealserve.attest._amd import GUID_ARK, build_cert_table, parse_cert_table
from sealserve.attest._certs import Rejected, load_certificate
from sealserve.attest._snp import check_snp
from sealserve.attest._snp_cache import fill_cache
from sealserve.attest._synthetic import SyntheticAmd
from sealserve.errors import AttestationError

NOW = 1_750_000_000
TCB = {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 210}
TURIN_TCB = {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}
CHIP = bytes(range(64))
MEASUREMENT = bytes([0x5A]) * 48


@pytest.fixture(scope="module")
def milan() -> SyntheticAmd:
    return SyntheticAmd("Milan")


@pytest.fixture(scope="module")
def vcek(milan: SyntheticAmd) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key, cert = milan.leaf(tcb=TCB, chip_id=CHIP)
    return key, milan.der(cert)


def _check(amd: SyntheticAmd, report: bytes, *certs: bytes, now: int = NOW, **anchors: object):  # type: ignore[no-untyped-def]
    return check_snp(report, now=now, anchors=amd.anchors(**anchors), certificates=certs)  # type: ignore[arg-type]


def test_a_signed_report_verifies_for_each_version(
    milan: SyntheticAmd, vcek: tuple[ec.EllipticCurvePrivateKey, bytes]
) -> None:
    key, cert = vcek
    for version in (2, 3, 5):
        report = milan.report(key, tcb=TCB, chip_id=CHIP, version=version, measurement=MEASUREMENT)
        att = _check(milan, report, cert)
        assert att.report.version == version
        assert att.product == "Milan"
        assert att.tcb.components() == TCB
        assert att.report.measurement == MEASUREMENT
        assert att.report.cpuid == ((0x19, 0x01, 0x01) if version >= 3 else None)
    with pytest.raises(Rejected, match="report version 1"):
        _check(milan, milan.report(key, tcb=TCB, chip_id=CHIP, version=1), cert)


@pytest.mark.parametrize("product", ["Genoa", "Turin"])
def test_other_product_lines_and_their_tcb_layouts(product: str) -> None:
    amd = SyntheticAmd(product)
    tcb = TURIN_TCB if product == "Turin" else TCB
    key, cert = amd.leaf(tcb=tcb, chip_id=CHIP[:8] if product == "Turin" else CHIP)
    att = _check(amd, amd.report(key, tcb=tcb, chip_id=CHIP), amd.der(cert))
    assert att.product == product
    assert att.tcb.components() == tcb
    if product == "Turin":
        assert att.report.reported_tcb == bytes([1, 2, 3, 4, 0, 0, 0, 5])
    # The report says a Milan CPU, the chain is another product line's.
    with pytest.raises(Rejected, match=f"not a {product}"):
        _check(amd, amd.report(key, tcb=tcb, chip_id=CHIP, cpuid=(0x19, 1, 1)), amd.der(cert))


def test_the_chain_is_checked_link_by_link(
    milan: SyntheticAmd, vcek: tuple[ec.EllipticCurvePrivateKey, bytes]
) -> None:
    key, cert = vcek
    report = milan.report(key, tcb=TCB, chip_id=CHIP)
    other = SyntheticAmd("Milan")
    # A VCEK of another hierarchy with the same names: its ASK did not sign it.
    other_key, other_cert = other.leaf(tcb=TCB, chip_id=CHIP)
    with pytest.raises(Rejected, match="signature of the VCEK"):
        _check(milan, milan.report(other_key, tcb=TCB, chip_id=CHIP), other.der(other_cert))
    # The ARK pinned is another one than the ARK at hand.
    pinned_other = SnpAnchors(
        ark_pins={"Milan": other.ark_pin},
        certificates=(milan.der(milan.ark), milan.der(milan.ask)),
    )
    with pytest.raises(Rejected, match="no ARK pinned"):
        check_snp(report, now=NOW, anchors=pinned_other, certificates=[cert])
    # A host adding an ASK of its own to the table neither passes nor hides the real one.
    with pytest.raises(Rejected, match="signature of the VCEK"):
        _check(other, report, cert, milan.der(milan.ask))
    assert _check(milan, report, other.der(other.ask), cert).product == "Milan"
    # The default anchors pin AMD's ARKs: the test ARK is nobody's.
    with pytest.raises(Rejected, match="no ARK pinned"):
        check_snp(report, now=NOW, certificates=[cert, milan.der(milan.ask), milan.der(milan.ark)])
    # Everything but the ASK.
    with pytest.raises(Rejected, match="no ASK"):
        check_snp(report, now=NOW, anchors=milan.anchors(with_chain=False),
                  certificates=[cert, milan.der(milan.ark)])  # fmt: skip
    # The chain from the host's certificate table instead of the verifier's anchors.
    table = milan.cert_table(milan.leaf(tcb=TCB, chip_id=CHIP)[1])
    assert len(parse_cert_table(table)) == 3
    att = check_snp(
        report,
        now=NOW,
        anchors=milan.anchors(with_chain=False),
        certificates=[cert, *parse_cert_table(table)[1:]],
    )
    assert att.product == "Milan"


def test_windows_at_now(milan: SyntheticAmd) -> None:
    key, cert = milan.leaf(tcb=TCB, chip_id=CHIP, not_before=NOW - 100, not_after=NOW + 100)
    report = milan.report(key, tcb=TCB, chip_id=CHIP)
    _check(milan, report, milan.der(cert))
    with pytest.raises(Rejected, match="VCEK is not valid"):
        _check(milan, report, milan.der(cert), now=NOW + 101)
    with pytest.raises(Rejected, match="VCEK is not valid"):
        _check(milan, report, milan.der(cert), now=NOW - 101)
    expired_ca = SyntheticAmd("Milan", not_after=NOW - 1)
    key, cert = expired_ca.leaf(tcb=TCB, chip_id=CHIP, not_after=NOW + 10**6)
    with pytest.raises(Rejected, match="not valid"):
        _check(expired_ca, expired_ca.report(key, tcb=TCB, chip_id=CHIP), expired_ca.der(cert))


def test_the_vcek_must_be_for_the_reported_tcb_and_chip(milan: SyntheticAmd) -> None:
    key, cert = milan.leaf(tcb=TCB, chip_id=CHIP)
    lowered = {**TCB, "microcode": TCB["microcode"] - 1}
    # A report claiming another TCB than the VCEK's (a lowered one, or a raised one).
    for claimed in (lowered, {**TCB, "snp": TCB["snp"] + 1}):
        with pytest.raises(Rejected, match="for the report's chip and TCB"):
            _check(milan, milan.report(key, tcb=claimed, chip_id=CHIP), milan.der(cert))
    # A report of another chip.
    with pytest.raises(Rejected, match="for the report's chip and TCB"):
        _check(milan, milan.report(key, tcb=TCB, chip_id=bytes(64)), milan.der(cert))
    # A VCEK without one of its TCB extensions is no VCEK for any report.
    partial_key, partial = milan.leaf(
        tcb=TCB, chip_id=CHIP, tcb_override={"bootloader": 9, "tee": 0, "snp": 21}
    )
    with pytest.raises(Rejected):
        _check(milan, milan.report(partial_key, tcb=TCB, chip_id=CHIP), milan.der(partial))


def test_the_signing_key_field_decides_vcek_or_vlek(milan: SyntheticAmd) -> None:
    vlek_key, vlek = milan.leaf(role="vlek", tcb=TCB)
    vcek_key, vcek = milan.leaf(tcb=TCB, chip_id=CHIP)
    vlek_report = milan.report(vlek_key, tcb=TCB, signing_key=1)
    att = _check(milan, vlek_report, milan.der(vlek))
    assert att.report.signing_key == "vlek"
    # A VLEK report checked against a VCEK, and a VCEK report signed by the VLEK.
    with pytest.raises(Rejected, match="no VLEK"):
        _check(milan, vlek_report, milan.der(vcek))
    with pytest.raises(Rejected, match="no VCEK"):
        _check(milan, milan.report(vlek_key, tcb=TCB, chip_id=CHIP), milan.der(vlek))
    with pytest.raises(Rejected, match="signing-key field 7"):
        _check(milan, milan.report(vcek_key, tcb=TCB, chip_id=CHIP, signing_key=7), milan.der(vcek))


def test_crls_are_honoured_when_given(milan: SyntheticAmd) -> None:
    key, cert = milan.leaf(tcb=TCB, chip_id=CHIP, serial=4242)
    report = milan.report(key, tcb=TCB, chip_id=CHIP)
    current = milan.crl(revoked=[7], this_update=NOW - 10, next_update=NOW + 10)
    _check(milan, report, milan.der(cert), crls=[current])
    revoked_ask = milan.crl(
        revoked=[milan.ask.serial_number], this_update=NOW - 10, next_update=NOW + 10
    )
    with pytest.raises(Rejected, match="revoked"):
        _check(milan, report, milan.der(cert), crls=[revoked_ask])
    stale = milan.crl(revoked=[], this_update=NOW - 100, next_update=NOW - 10)
    with pytest.raises(Rejected, match="not current"):
        _check(milan, report, milan.der(cert), crls=[stale])
    forged = SyntheticAmd("Milan").crl(revoked=[], this_update=NOW - 10, next_update=NOW + 10)
    with pytest.raises(Rejected, match="signature"):
        _check(milan, report, milan.der(cert), crls=[forged])


def test_a_report_of_another_size_or_algorithm_is_refused(
    milan: SyntheticAmd, vcek: tuple[ec.EllipticCurvePrivateKey, bytes]
) -> None:
    key, cert = vcek
    report = milan.report(key, tcb=TCB, chip_id=CHIP)
    for data in (report[:-1], report + b"\x00", b""):
        with pytest.raises(AttestationError):
            verify_snp(data, now=NOW, anchors=milan.anchors(), certificates=[cert])
    bad_algo = bytearray(report)
    bad_algo[0x34] = 2
    with pytest.raises(Rejected, match="signature algorithm"):
        _check(milan, bytes(bad_algo), cert)
    with pytest.raises(TypeError):
        verify_snp(report, now=-1, anchors=milan.anchors(), certificates=[cert])


def _policy(*, allow_debug: bool = False, **snp: object) -> Policy:
    reference = {"min_tcb": {"Milan": TCB}, "measurements": [MEASUREMENT.hex()], **snp}
    return Policy(
        reference_values=(ReferenceValues(snp=SnpReference(**reference)),),  # type: ignore[arg-type]
        allow_debug=allow_debug,
    )


@pytest.mark.parametrize(
    ("report_args", "policy", "admitted"),
    [
        pytest.param({}, _policy(), True, id="baseline"),
        pytest.param({"policy": 0x30000 | 1 << 19}, _policy(), False, id="debug"),
        pytest.param({"policy": 0x30000 | 1 << 19}, _policy(allow_debug=True), True, id="debug-ok"),
        pytest.param({"policy": 0x30000 | 1 << 18}, _policy(), False, id="migration-agent"),
        pytest.param(
            {"policy": 0x30000 | 1 << 18}, _policy(allow_migration_agent=True), True, id="ma-ok"
        ),
        pytest.param({"platform_info": 0x1}, _policy(allow_smt=False), False, id="smt"),
        pytest.param({"platform_info": 0x0}, _policy(allow_smt=False), True, id="no-smt"),
        pytest.param({"vmpl": 2}, _policy(), False, id="vmpl"),
        pytest.param({"vmpl": 2}, _policy(vmpls=[0, 2]), True, id="vmpl-ok"),
        pytest.param({}, _policy(min_tcb={"Milan": {**TCB, "snp": 22}}), False, id="min-tcb"),
        pytest.param({}, _policy(measurements=["00" * 48]), False, id="measurement"),
        pytest.param({}, _policy(host_data=["11" * 32]), False, id="host-data"),
        pytest.param({"host_data": b"\x11" * 32}, _policy(host_data=["11" * 32]), True, id="hd-ok"),
        pytest.param({"guest_svn": 2}, _policy(min_guest_svn=3), False, id="guest-svn"),
    ],
)
def test_policy_and_reference_values(
    milan: SyntheticAmd,
    vcek: tuple[ec.EllipticCurvePrivateKey, bytes],
    report_args: dict[str, object],
    policy: Policy,
    admitted: bool,
) -> None:
    key, cert = vcek
    report_data = os.urandom(64)
    args = {"tcb": TCB, "chip_id": CHIP, "measurement": MEASUREMENT, **report_args}
    report = milan.report(key, report_data=report_data, **args)  # type: ignore[arg-type]
    evidence = milan.snp_evidence(report, milan.leaf(tcb=TCB, chip_id=CHIP)[1])
    # The evidence's own table carries another VCEK of the chip: the one in the anchors signs.
    trust = TrustAnchors(snp=milan.anchors(extra=(cert,)))
    if admitted:
        claims = verify_evidence(evidence, policy, report_data=report_data, trust=trust, now=NOW)
        assert claims.snp is not None
        assert claims.tcb_status is None
    else:
        with pytest.raises(AttestationError):
            verify_evidence(evidence, policy, report_data=report_data, trust=trust, now=NOW)
    # The report_data binding, whatever else: another key or nonce is refused.
    with pytest.raises(AttestationError):
        verify_evidence(evidence, policy, report_data=os.urandom(64), trust=trust, now=NOW)


def test_the_operator_cache(milan: SyntheticAmd, tmp_path: Path) -> None:
    key, vcek = milan.leaf(tcb=TCB, chip_id=CHIP)
    _, vlek = milan.leaf(role="vlek", tcb=TCB)
    downloads = tmp_path / "kds"
    downloads.mkdir()
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (milan.ask, milan.ark))
    (downloads / "cert_chain").write_bytes(chain)
    (downloads / "asvk.der").write_bytes(milan.der(milan.asvk))
    (downloads / "vcek.der").write_bytes(milan.der(vcek))
    (downloads / "vlek.der").write_bytes(milan.der(vlek))
    (downloads / "crl").write_bytes(milan.crl(revoked=[], this_update=NOW - 5, next_update=NOW + 5))
    (downloads / "notes.txt").write_text("not a certificate")
    foreign = SyntheticAmd("Milan")
    (downloads / "foreign-vcek.der").write_bytes(foreign.der(foreign.leaf(tcb=TCB)[1]))
    cache = tmp_path / "cache"
    result = fill_cache(downloads, cache, ark_pins={"Milan": milan.ark_pin})
    tcb_hex = TcbVersion.from_components("Milan", TCB).raw.hex()
    assert f"Milan/vcek/{CHIP.hex()}-{tcb_hex}.der" in result.stored
    assert {"Milan/ark.der", "Milan/ask.der", "Milan/asvk.der"} <= set(result.stored)
    assert any(p.startswith("Milan/crl-") for p in result.stored)
    assert any(p.startswith("Milan/vlek/") for p in result.stored)
    refused = dict(result.refused)
    assert set(refused) == {"notes.txt", "foreign-vcek.der"}
    # A report verifies from the cache alone, the report bringing no certificate.
    anchors = SnpAnchors.from_cache(cache, ark_pins={"Milan": milan.ark_pin})
    att = check_snp(milan.report(key, tcb=TCB, chip_id=CHIP), now=NOW, anchors=anchors)
    assert att.product == "Milan"
    # The cached CRL is honoured: stale after its next update.
    with pytest.raises(Rejected, match="not current"):
        check_snp(milan.report(key, tcb=TCB, chip_id=CHIP), now=NOW + 60, anchors=anchors)
    # With AMD's pins, the test hierarchy fills nothing.
    assert not fill_cache(downloads, tmp_path / "amd").stored


def test_certificates_whose_unsigned_parts_were_altered(milan: SyntheticAmd) -> None:
    der = milan.der(milan.leaf(tcb=TCB, chip_id=CHIP)[1])
    load_certificate(der)
    tbs_end = 4 + int.from_bytes(der[6:8], "big") + 4  # SEQUENCE { tbs (3082 len) ...
    sha384 = bytes.fromhex("0609608648016503040202")
    outer = der.index(sha384, tbs_end) + len(sha384) - 1  # the outer algorithm's hash...
    altered = der[:outer] + b"\x03" + der[outer + 1 :]  # ...said to be SHA-512
    with pytest.raises(Rejected, match="differs from the signed one"):
        load_certificate(altered)
    # The signature BIT STRING said to have an unused bit: `cryptography` parses that when
    # the signature's last bit is 0 (then the signature bytes are unchanged), else refuses.
    bits = der.rindex(bytes.fromhex("03820101"))
    with pytest.raises(Rejected, match="BIT STRING" if der[-1] % 2 == 0 else "does not parse"):
        load_certificate(der[: bits + 4] + b"\x01" + der[bits + 5 :])
    with pytest.raises(Rejected, match="does not parse"):
        load_certificate(der[:-1])


def test_certificate_tables() -> None:
    der = b"\x30\x03\x02\x01\x00"
    table = build_cert_table([(GUID_ARK, der)])
    assert parse_cert_table(table) == [der]
    for bad in (b"", table[:30], table[:24] + b"\x01" * 24):
        with pytest.raises(Rejected):
            parse_cert_table(bad)
