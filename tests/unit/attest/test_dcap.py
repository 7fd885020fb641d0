"""Real SGX and TDX quotes (../shared/testvectors/dcap), verified offline at an explicit time."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from sealserve.attest import (
    FORMAT_SGX_DCAP,
    FORMAT_TDX_DCAP,
    Evidence,
    Policy,
    TrustAnchors,
    verify_dcap,
    verify_evidence,
)
from sealserve.attest._dcap import DcapRejected, check_dcap
from sealserve.errors import AttestationError

SGX_NOW = 1750416971
TDX_NOW = 1750414563
TDX_OUTDATED_NOW = 1771498731
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
SGX_RD = b"Hello, world!".ljust(64, b"\x00")
SGX_STATUS = "ConfigurationAndSWHardeningNeeded"
SGX_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
REPORT_BODY = 48
REPORT_BODY_LEN = 384


def _load(folder: Path, name: str) -> tuple[bytes, bytes]:
    dcap = folder / "dcap"
    return (dcap / name).read_bytes(), (dcap / f"{name}_collateral.json").read_bytes()


@pytest.fixture(scope="module")
def sgx(testvectors_dir: Path) -> tuple[bytes, bytes]:
    return _load(testvectors_dir, "sgx_quote")


@pytest.fixture(scope="module")
def tdx(testvectors_dir: Path) -> tuple[bytes, bytes]:
    return _load(testvectors_dir, "tdx_quote")


def _evidence(vector: tuple[bytes, bytes]) -> Evidence:
    return Evidence.from_quote(vector[0], collateral=vector[1])


def _sgx_policy(**changes: object) -> Policy:
    base = Policy(measurements=frozenset({MRENCLAVE}), tcb_statuses=frozenset({SGX_STATUS}))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_sgx_vector(sgx: tuple[bytes, bytes]) -> None:
    report = verify_dcap(*sgx, now=SGX_NOW)
    assert report.tee == "SGX"
    assert report.status == SGX_STATUS
    assert report.advisories == SGX_ADVISORIES
    assert report.measurement.hex() == MRENCLAVE
    assert report.signer is not None
    assert report.signer.hex() == MRSIGNER
    assert (report.product_id, report.svn, report.debug) == (0, 0, False)
    assert report.report_data == SGX_RD
    assert set(report.summary()) >= {"status", "advisories", "measurement", "debug"}


def test_tdx_vector(tdx: tuple[bytes, bytes]) -> None:
    report = verify_dcap(*tdx, now=TDX_NOW)
    assert (report.tee, report.status, report.advisories, report.debug) == (
        "TDX",
        "UpToDate",
        (),
        False,
    )
    assert len(report.measurement) == 48  # MRTD
    assert len(report.rtmrs) == 4
    assert report.signer is None


def test_outdated_tdx_vector_is_rejected(testvectors_dir: Path) -> None:
    quote, collateral = _load(testvectors_dir, "tdx_quote_outdated")
    with pytest.raises(DcapRejected, match="No matching TCB level found"):
        check_dcap(quote, collateral, now=TDX_OUTDATED_NOW)
    with pytest.raises(AttestationError, match=r"^attestation failed$"):
        verify_dcap(quote, collateral, now=TDX_OUTDATED_NOW)


@pytest.mark.parametrize("offset", [0, 64, 112, 128, 200, 320, 383])
def test_a_flipped_byte_of_the_report_body_is_rejected(
    sgx: tuple[bytes, bytes], offset: int
) -> None:
    quote = bytearray(sgx[0])
    quote[REPORT_BODY + offset] ^= 0x01
    with pytest.raises(AttestationError):
        verify_dcap(bytes(quote), sgx[1], now=SGX_NOW)


def test_todays_clock_is_rejected(sgx: tuple[bytes, bytes]) -> None:
    with pytest.raises(DcapRejected, match="Expired"):
        check_dcap(*sgx, now=int(time.time()))


def test_collateral_may_be_a_mapping_or_text(sgx: tuple[bytes, bytes]) -> None:
    quote, collateral = sgx
    doc = json.loads(collateral)
    assert verify_dcap(quote, doc, now=SGX_NOW).status == SGX_STATUS
    assert verify_dcap(quote, collateral.decode(), now=SGX_NOW).status == SGX_STATUS
    with pytest.raises(AttestationError):
        verify_dcap(quote, {**doc, "tcb_info": "{}"}, now=SGX_NOW)
    with pytest.raises(AttestationError):
        verify_dcap(quote, b"not json", now=SGX_NOW)
    with pytest.raises(TypeError, match="now"):
        verify_dcap(quote, collateral, now=1.5)  # type: ignore[arg-type]


def test_evidence_from_a_quote_and_its_wire_form(
    sgx: tuple[bytes, bytes], tdx: tuple[bytes, bytes]
) -> None:
    evidence = _evidence(sgx)
    assert evidence.format == FORMAT_SGX_DCAP
    assert evidence.measurement.hex() == MRENCLAVE
    assert evidence.report_data == SGX_RD
    assert evidence.tcb_status is None  # known only after verification
    assert Evidence.from_bytes(evidence.to_bytes()) == evidence
    assert _evidence(tdx).format == FORMAT_TDX_DCAP
    with pytest.raises(AttestationError):
        Evidence.from_quote(b"not a quote", collateral=sgx[1])


def test_policy_accepts_the_sgx_quote_it_pins(sgx: tuple[bytes, bytes]) -> None:
    claims = verify_evidence(
        _evidence(sgx),
        _sgx_policy(),
        report_data=SGX_RD,
        trust=TrustAnchors(),
        now=SGX_NOW,
    )
    assert claims.measurement == MRENCLAVE
    assert claims.advisories == SGX_ADVISORIES


def test_a_policy_pinning_another_mrenclave_rejects(sgx: tuple[bytes, bytes]) -> None:
    policy = _sgx_policy(measurements=frozenset({"00" * 32}))
    with pytest.raises(AttestationError):
        verify_evidence(
            _evidence(sgx), policy, report_data=SGX_RD, trust=TrustAnchors(), now=SGX_NOW
        )


@pytest.mark.parametrize(
    ("statuses", "advisories", "ok"),
    [
        ({"UpToDate"}, None, False),
        ({"UpToDate", SGX_STATUS}, None, True),
        ({SGX_STATUS}, set(SGX_ADVISORIES), True),
        ({SGX_STATUS}, {"INTEL-SA-00289"}, False),
    ],
)
def test_tcb_status_and_advisory_acceptance(
    sgx: tuple[bytes, bytes], statuses: set[str], advisories: set[str] | None, ok: bool
) -> None:
    policy = _sgx_policy(
        tcb_statuses=frozenset(statuses),
        allowed_advisories=None if advisories is None else frozenset(advisories),
    )
    evidence = _evidence(sgx)
    if ok:
        verify_evidence(evidence, policy, report_data=SGX_RD, trust=TrustAnchors(), now=SGX_NOW)
    else:
        with pytest.raises(AttestationError):
            verify_evidence(evidence, policy, report_data=SGX_RD, trust=TrustAnchors(), now=SGX_NOW)


@pytest.mark.parametrize(("min_svn", "ok"), [(0, True), (1, False)])
def test_signer_route(sgx: tuple[bytes, bytes], min_svn: int, ok: bool) -> None:
    policy = Policy(
        signer=MRSIGNER, product_id=0, min_svn=min_svn, tcb_statuses=frozenset({SGX_STATUS})
    )
    evidence = _evidence(sgx)
    if ok:
        verify_evidence(evidence, policy, report_data=SGX_RD, trust=TrustAnchors(), now=SGX_NOW)
    else:
        with pytest.raises(AttestationError):
            verify_evidence(evidence, policy, report_data=SGX_RD, trust=TrustAnchors(), now=SGX_NOW)


def test_report_data_binding(sgx: tuple[bytes, bytes]) -> None:
    evidence = _evidence(sgx)
    with pytest.raises(AttestationError):
        verify_evidence(
            evidence,
            _sgx_policy(),
            report_data=b"Hello, world?".ljust(64, b"\x00"),
            trust=TrustAnchors(),
            now=SGX_NOW,
        )


def test_debug_quotes_are_refused_unless_allowed(sgx: tuple[bytes, bytes]) -> None:
    # No debug quote is recorded, and flipping the bit breaks the signature, so the check is
    # shown on the evidence's claimed field (which must agree with the verified quote) ...
    evidence = dataclasses.replace(_evidence(sgx), debug=True)
    for policy in (_sgx_policy(), _sgx_policy(allow_debug=True)):
        with pytest.raises(AttestationError):
            verify_evidence(evidence, policy, report_data=SGX_RD, trust=TrustAnchors(), now=SGX_NOW)
    # ... and on the SGX DEBUG attribute bit itself, which the quote signature covers.
    quote = bytearray(sgx[0])
    quote[REPORT_BODY + 48] |= 0x02  # ATTRIBUTES.FLAGS.DEBUG
    assert Evidence.from_quote(bytes(quote), collateral=sgx[1]).debug
    with pytest.raises(AttestationError):
        verify_dcap(bytes(quote), sgx[1], now=SGX_NOW)


def test_dcap_can_be_refused_by_the_trust_anchors(sgx: tuple[bytes, bytes]) -> None:
    with pytest.raises(AttestationError):
        verify_evidence(
            _evidence(sgx),
            _sgx_policy(),
            report_data=SGX_RD,
            trust=TrustAnchors(accept_dcap=False),
            now=SGX_NOW,
        )


def test_tdx_measurement_pinning(tdx: tuple[bytes, bytes]) -> None:
    evidence = _evidence(tdx)
    report = verify_dcap(*tdx, now=TDX_NOW)
    policy = Policy(measurements=frozenset({report.measurement.hex()}))
    verify_evidence(
        evidence, policy, report_data=report.report_data, trust=TrustAnchors(), now=TDX_NOW
    )
    with pytest.raises(AttestationError):
        verify_evidence(
            evidence,
            Policy(measurements=frozenset({MRENCLAVE})),
            report_data=report.report_data,
            trust=TrustAnchors(),
            now=TDX_NOW,
        )
