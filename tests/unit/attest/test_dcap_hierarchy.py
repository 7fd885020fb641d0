"""The test DCAP hierarchy (tests/hwfakes/dcap.py) against dcap-qvl and the recorded quotes.

Its quotes must verify with ``dcap_qvl.verify_with_root_ca`` under the test root, exactly as a
real quote verifies under Intel's root, and fail where a real one fails (Intel's root, debug,
an out-of-date TCB, a revoked PCK certificate, expired collateral, any changed byte); and
their layout must be the recorded real quotes' (../shared/testvectors/dcap): same header
fields, same signature-data structure, same PCK extension fields.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from sealserve.attest import FORMAT_SGX_DCAP, FORMAT_TDX_DCAP, Evidence
from sealserve.attest._dcap import DcapRejected, check_dcap
from tests.hwfakes.dcap import DcapHierarchy, DcapPlatform

MRENCLAVE = bytes(range(32))
MRTD = bytes(range(48))


@pytest.fixture(scope="module")
def hierarchy() -> DcapHierarchy:
    return DcapHierarchy()


@pytest.fixture(scope="module")
def platform(hierarchy: DcapHierarchy) -> DcapPlatform:
    return hierarchy.platform()


@pytest.fixture(scope="module")
def tdx_platform(hierarchy: DcapHierarchy) -> DcapPlatform:
    return hierarchy.platform(fmspc=bytes.fromhex("b0c06f000000"), sgx_type=1)


def _now(h: DcapHierarchy) -> int:
    return h.issued_at + 86400


def _collateral(platform: DcapPlatform, tee: str, **kw: Any) -> Any:
    return dcap_qvl.QuoteCollateralV3.from_json(json.dumps(platform.collateral(tee, **kw)))


def test_sgx_and_tdx_quotes_verify_under_the_test_root_only(
    hierarchy: DcapHierarchy, platform: DcapPlatform
) -> None:
    rd = os.urandom(64)
    rtmr3 = os.urandom(48)
    sgx = platform.sgx_quote(rd, mrenclave=MRENCLAVE, mrsigner=b"\x07" * 32, isv_svn=3)
    tdx = platform.tdx_quote(rd, mrtd=MRTD, rtmrs=[bytes(48)] * 3 + [rtmr3])
    now = _now(hierarchy)
    for quote, tee in ((sgx, "SGX"), (tdx, "TDX")):
        verified = dcap_qvl.verify_with_root_ca(
            quote, _collateral(platform, tee), hierarchy.root_der, now
        )
        assert verified.status == "UpToDate"
        report = check_dcap(
            quote, platform.collateral_json(tee), now=now, root_ca_der=hierarchy.root_der
        )
        assert (report.tee, report.status, report.report_data, report.debug) == (
            tee,
            "UpToDate",
            rd,
            False,
        )
        # Intel's root (dcap-qvl's default) does not know the test hierarchy
        with pytest.raises(DcapRejected):
            check_dcap(quote, platform.collateral_json(tee), now=now)
        # nor does another test root
        with pytest.raises(DcapRejected):
            check_dcap(
                quote, platform.collateral_json(tee), now=now, root_ca_der=DcapHierarchy().root_der
            )
    sgx_report = check_dcap(
        sgx, platform.collateral_json("SGX"), now=now, root_ca_der=hierarchy.root_der
    )
    assert (sgx_report.measurement, sgx_report.signer, sgx_report.svn) == (
        MRENCLAVE,
        b"\x07" * 32,
        3,
    )
    tdx_report = check_dcap(
        tdx, platform.collateral_json("TDX"), now=now, root_ca_der=hierarchy.root_der
    )
    assert tdx_report.measurement == MRTD
    assert tdx_report.rtmrs[3] == rtmr3
    assert Evidence.from_quote(sgx, collateral=b"{}").format == FORMAT_SGX_DCAP
    assert Evidence.from_quote(tdx, collateral=b"{}").format == FORMAT_TDX_DCAP


def test_debug_out_of_date_revoked_expired_and_crossed_collateral_fail(
    platform: DcapPlatform,
) -> None:
    h = DcapHierarchy()
    p = h.platform()
    now = _now(h)
    rd = os.urandom(64)

    def check(quote: bytes, tee: str, *, at: int = now, **kw: Any) -> str:
        return check_dcap(
            quote, p.collateral_json(tee, **kw), now=at, root_ca_der=h.root_der
        ).status

    with pytest.raises(DcapRejected, match=r"[Dd]ebug"):
        check(p.sgx_quote(rd, mrenclave=MRENCLAVE, debug=True), "SGX")
    with pytest.raises(DcapRejected, match=r"[Dd]ebug"):
        check(p.tdx_quote(rd, mrtd=MRTD, debug=True), "TDX")
    # a platform below the up-to-date level: dcap-qvl says OutOfDate (a policy refuses it)
    assert check(p.sgx_quote(rd, mrenclave=MRENCLAVE), "SGX", outdated=True) == "OutOfDate"
    assert check(p.tdx_quote(rd, mrtd=MRTD), "TDX", outdated=True) == "OutOfDate"
    # an SGX quote with TDX collateral and the reverse
    with pytest.raises(DcapRejected):
        check(p.sgx_quote(rd, mrenclave=MRENCLAVE), "TDX")
    with pytest.raises(DcapRejected):
        check(p.tdx_quote(rd, mrtd=MRTD), "SGX")
    # collateral past its nextUpdate (and before its issue date)
    with pytest.raises(DcapRejected, match=r"[Ee]xpired"):
        check(p.sgx_quote(rd, mrenclave=MRENCLAVE), "SGX", at=h.issued_at + 31 * 86400)
    with pytest.raises(DcapRejected):
        check(p.sgx_quote(rd, mrenclave=MRENCLAVE), "SGX", at=h.issued_at - 86400)
    # another platform's collateral (another FMSPC)
    other = h.platform(fmspc=bytes.fromhex("00606a000000"))
    with pytest.raises(DcapRejected):
        check_dcap(
            p.sgx_quote(rd, mrenclave=MRENCLAVE),
            other.collateral_json("SGX"),
            now=now,
            root_ca_der=h.root_der,
        )
    # a revoked PCK certificate
    h.revoke(p.pck_cert)
    with pytest.raises(DcapRejected):
        check(p.sgx_quote(rd, mrenclave=MRENCLAVE), "SGX")


@pytest.mark.parametrize("tee", ["SGX", "TDX"])
def test_every_byte_of_the_signed_quote_is_covered(
    hierarchy: DcapHierarchy, platform: DcapPlatform, tee: str
) -> None:
    rd = os.urandom(64)
    if tee == "SGX":
        quote = platform.sgx_quote(rd, mrenclave=MRENCLAVE)
        signed = 48 + 384
    else:
        quote = platform.tdx_quote(rd, mrtd=MRTD)
        signed = 48 + 584
    collateral = platform.collateral_json(tee)
    now = _now(hierarchy)
    check_dcap(quote, collateral, now=now, root_ca_der=hierarchy.root_der)
    for at in range(signed):
        flipped = bytearray(quote)
        flipped[at] ^= 0x01
        with pytest.raises(DcapRejected):
            check_dcap(bytes(flipped), collateral, now=now, root_ca_der=hierarchy.root_der)


def test_a_changed_collateral_document_fails(
    hierarchy: DcapHierarchy, platform: DcapPlatform
) -> None:
    quote = platform.sgx_quote(os.urandom(64), mrenclave=MRENCLAVE)
    now = _now(hierarchy)
    for field in ("tcb_info", "qe_identity"):
        doc = platform.collateral("SGX")
        doc[field] = doc[field].replace(
            '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18'
        )
        with pytest.raises(DcapRejected, match=r"[Ss]ignature"):
            check_dcap(quote, json.dumps(doc).encode(), now=now, root_ca_der=hierarchy.root_der)


# -- the layout of the recorded real quotes -----------------------------------------------------


def _sections(quote: bytes) -> dict[str, Any]:
    """Split a quote into its parts (Intel's quote v3 / v4 layouts)."""
    version, key_type, tee = struct.unpack_from("<HHI", quote, 0)
    body = 384 if tee == 0 else 584
    at = 48 + body
    (length,) = struct.unpack_from("<I", quote, at)
    data = quote[at + 4 : at + 4 + length]
    out: dict[str, Any] = {
        "version": version,
        "key_type": key_type,
        "tee": tee,
        "vendor": quote[12:28],
        # a quote buffer may be longer than the quote (the recorded TDX quote has zero padding)
        "signature_data_fits": at + 4 + length <= len(quote) and not any(quote[at + 4 + length :]),
    }
    rest = data[128:]
    if version == 4:
        out["outer_type"], outer_len = struct.unpack_from("<HI", rest, 0)
        rest = rest[6 : 6 + outer_len]
    auth_len = struct.unpack_from("<H", rest, 448)[0]
    out["auth_data"] = auth_len
    out["cert_type"], cert_len = struct.unpack_from("<HI", rest, 450 + auth_len)
    out["cert_data_ends"] = 456 + auth_len + cert_len == len(rest)
    out["chain"] = rest[456 + auth_len :]
    return out


@pytest.mark.parametrize(("name", "tee"), [("sgx_quote", "SGX"), ("tdx_quote", "TDX")])
def test_the_layout_is_the_recorded_real_quotes(
    testvectors_dir: Path,
    platform: DcapPlatform,
    tdx_platform: DcapPlatform,
    name: str,
    tee: str,
) -> None:
    real = (testvectors_dir / "dcap" / name).read_bytes()
    if tee == "TDX":
        platform = tdx_platform
    rd = os.urandom(64)
    ours = (
        platform.sgx_quote(rd, mrenclave=MRENCLAVE)
        if tee == "SGX"
        else platform.tdx_quote(rd, mrtd=MRTD)
    )
    a, b = _sections(real), _sections(ours)
    for key in ("version", "key_type", "tee", "vendor", "outer_type", "auth_data", "cert_type"):
        assert a.get(key) == b.get(key), key
    for parts in (a, b):
        assert parts["signature_data_fits"]
        assert parts["cert_data_ends"]
    # the PCK certificates carry the same extension fields
    real_ext = dcap_qvl.parse_pck_extension_from_pem(a["chain"])
    our_ext = dcap_qvl.parse_pck_extension_from_pem(b["chain"])
    for field in ("ppid", "cpu_svn", "pce_id", "fmspc"):
        assert len(getattr(real_ext, field)) == len(getattr(our_ext, field)), field
    assert real_ext.sgx_type == our_ext.sgx_type
    assert (real_ext.platform_instance_id is None) == (our_ext.platform_instance_id is None)
    # both parse to the same kind of report, with report_data where the verifier reads it
    assert type(dcap_qvl.parse_quote(real).report) is type(dcap_qvl.parse_quote(ours).report)
    assert bytes(dcap_qvl.parse_quote(ours).report.report_data) == rd
