"""What verified evidence proves, per backend: :func:`backend_claims` (no policy yet).

Each backend establishes its claims from ``raw`` alone under the verifier's trust anchors at
``now``: a simulated platform key it pins, a DCAP quote chained to Intel's root, an SEV-SNP
report chained to AMD's pinned ARK, a TPM quote whose attestation key chains to a pinned root,
or an Azure CVM's whole chain.  A failure raises :class:`~sealserve.attest._certs.Rejected`
with the reason; the caller logs it and raises the fixed error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

from sealserve.attest._certs import Rejected
from sealserve.attest._evidence import (
    FORMAT_AZURE_SNP_VTPM,
    FORMAT_LAUNCH,
    FORMAT_SEV_SNP,
    FORMAT_SGX_DCAP,
    FORMAT_SIMULATED,
    FORMAT_TDX_DCAP,
    FORMAT_TPM_QUOTE,
    Evidence,
)
from sealserve.attest._snp import SnpAttestation
from sealserve.attest._trust import TrustAnchors

__all__ = ["VerifiedClaims", "backend_claims"]

_FUTURE_SKEW_S: Final = 60.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifiedClaims:
    """What verified evidence proves."""

    format: str
    #: Hex MRENCLAVE / MRTD / SEV-SNP launch measurement / TPM PCR digest / simulated
    #: measurement.
    measurement: str
    debug: bool
    #: Intel's TCB status (DCAP), the simulated platform's; None where the hardware publishes
    #: none (SEV-SNP, TPM: a policy's reference values set a minimum TCB instead).
    tcb_status: str | None
    advisories: tuple[str, ...]
    report_data: bytes
    signer: str | None = None
    product_id: int | None = None
    svn: int | None = None
    #: The simulated entry name ("runtime", "keyservice", ...); None for hardware.
    entry: str | None = None
    #: When simulated evidence was issued (Unix seconds); None for hardware.
    issued_at: int | None = None
    #: RTMR0..3 (TDX), hex; empty otherwise.
    rtmrs: tuple[str, ...] = ()
    #: The verified SEV-SNP report (bare, or an Azure CVM's); None otherwise.
    snp: SnpAttestation | None = None
    #: The PCR values a verified TPM quote vouches for, by bank and index; None otherwise.
    pcrs: Mapping[str, Mapping[int, bytes]] | None = None
    #: Launch evidence (``sealserve-launch/1``): the hardware evidence's format and
    #: measurement (MRTD, SNP MEASUREMENT, PCR digest), whose reference values the policy
    #: checks; ``measurement`` and ``entry`` then name the launched process.
    platform_format: str | None = None
    platform_measurement: str | None = None


def backend_claims(
    evidence: Evidence, trust: TrustAnchors, *, now: float, max_age_s: float
) -> VerifiedClaims:
    """The claims ``evidence.raw`` proves under ``trust`` at ``now``; ``Rejected`` if none."""
    fmt = evidence.format
    if fmt == FORMAT_SIMULATED:
        claims = _simulated(evidence, trust, now=now, max_age_s=max_age_s)
    elif fmt in (FORMAT_SGX_DCAP, FORMAT_TDX_DCAP):
        claims = _dcap(evidence, trust, now=now)
    elif fmt == FORMAT_SEV_SNP:
        claims = _snp(evidence, trust, now=now)
    elif fmt == FORMAT_TPM_QUOTE:
        claims = _tpm(evidence, trust, now=now)
    elif fmt == FORMAT_AZURE_SNP_VTPM:
        claims = _azure(evidence, trust, now=now)
    elif fmt == FORMAT_LAUNCH:
        claims = _launch(evidence, trust, now=now, max_age_s=max_age_s)
    else:  # pragma: no cover - Evidence refuses unknown formats
        raise Rejected("format")
    # The convenience fields of the Evidence must say what the raw bytes prove.
    if (
        evidence.measurement.hex() != claims.measurement
        or evidence.report_data != claims.report_data
        or evidence.debug != claims.debug
    ):
        raise Rejected("fields_disagree_with_raw")
    return claims


def _simulated(
    evidence: Evidence, trust: TrustAnchors, *, now: float, max_age_s: float
) -> VerifiedClaims:
    from sealserve.attest._simulated_evidence import verify_simulated

    if not trust.simulated_platform_keys:
        raise Rejected("no_simulated_anchor")
    try:
        sim = verify_simulated(evidence.raw, trust.simulated_platform_keys)
    except ValueError as exc:
        raise Rejected(f"simulated:{exc}") from None
    if not now - max_age_s <= sim.issued_at <= now + _FUTURE_SKEW_S:
        raise Rejected("age")
    return VerifiedClaims(
        format=FORMAT_SIMULATED,
        measurement=sim.measurement.hex(),
        debug=sim.debug,
        tcb_status=sim.tcb_status,
        advisories=(),
        report_data=sim.report_data,
        entry=sim.entry,
        issued_at=sim.issued_at,
    )


def _dcap(evidence: Evidence, trust: TrustAnchors, *, now: float) -> VerifiedClaims:
    from sealserve.attest._dcap import DcapRejected, check_dcap

    if not trust.accept_dcap:
        raise Rejected("dcap_not_trusted")
    if evidence.collateral is None:
        raise Rejected("no_collateral")
    try:
        report = check_dcap(
            evidence.raw, evidence.collateral, now=int(now), root_ca_der=trust.dcap_root_ca_der
        )
    except DcapRejected as exc:
        raise Rejected(f"dcap:{exc}") from None
    expected = FORMAT_SGX_DCAP if report.tee == "SGX" else FORMAT_TDX_DCAP
    if evidence.format != expected:
        raise Rejected("format")
    return VerifiedClaims(
        format=evidence.format,
        measurement=report.measurement.hex(),
        debug=report.debug,
        tcb_status=report.status,
        advisories=report.advisories,
        report_data=report.report_data,
        signer=None if report.signer is None else report.signer.hex(),
        product_id=report.product_id,
        svn=report.svn,
        rtmrs=tuple(r.hex() for r in report.rtmrs),
    )


def _snp(evidence: Evidence, trust: TrustAnchors, *, now: float) -> VerifiedClaims:
    from sealserve.attest._amd import parse_cert_table
    from sealserve.attest._snp import check_snp

    if trust.snp is None:
        raise Rejected("snp_not_trusted")
    certs = parse_cert_table(evidence.collateral) if evidence.collateral else []
    snp = check_snp(evidence.raw, now=int(now), anchors=trust.snp, certificates=certs)
    return VerifiedClaims(
        format=FORMAT_SEV_SNP,
        measurement=snp.report.measurement.hex(),
        debug=snp.report.debug,
        tcb_status=None,
        advisories=(),
        report_data=snp.report.report_data,
        snp=snp,
    )


def _tpm(evidence: Evidence, trust: TrustAnchors, *, now: float) -> VerifiedClaims:
    from sealserve.attest._hw_evidence import TpmBundle
    from sealserve.attest._tpm import TpmSignature, check_ak_chain, check_quote, tpm_qualifying_data

    if trust.tpm is None:
        raise Rejected("tpm_not_trusted")
    bundle = TpmBundle.from_raw(evidence.raw)
    if not bundle.ak_chain:
        raise Rejected("tpm: no AK certificate")
    ak = check_ak_chain(bundle.ak_chain, trust.tpm, now=int(now))
    quote, quoted = check_quote(
        bundle.attest,
        TpmSignature.parse(bundle.signature),
        ak_public=ak,
        pcrs=bundle.pcrs,
        nonce=tpm_qualifying_data(bundle.report_data),
    )
    return VerifiedClaims(
        format=FORMAT_TPM_QUOTE,
        measurement=quote.pcr_digest.hex(),
        debug=False,
        tcb_status=None,
        advisories=(),
        report_data=bundle.report_data,
        pcrs=quoted,
    )


def _azure(evidence: Evidence, trust: TrustAnchors, *, now: float) -> VerifiedClaims:
    from sealserve.attest._azure import check_azure_cvm
    from sealserve.attest._hw_evidence import AzureBundle
    from sealserve.attest._tpm import TpmSignature, tpm_qualifying_data

    if trust.snp is None:
        raise Rejected("snp_not_trusted")
    bundle = AzureBundle.from_raw(evidence.raw)
    azure = check_azure_cvm(
        bundle.hcl_report,
        attest=bundle.attest,
        signature=TpmSignature.parse(bundle.signature),
        pcrs=bundle.pcrs,
        nonce=tpm_qualifying_data(bundle.report_data),
        now=int(now),
        anchors=trust.snp,
        certificates=bundle.certificates,
    )
    return VerifiedClaims(
        format=FORMAT_AZURE_SNP_VTPM,
        measurement=azure.snp.report.measurement.hex(),
        debug=azure.snp.report.debug,
        tcb_status=None,
        advisories=(),
        report_data=bundle.report_data,
        snp=azure.snp,
        pcrs=azure.pcrs,
    )


#: Which hardware evidence may carry a launch log in which register.
_LAUNCH_REGISTERS: Final = {
    FORMAT_TDX_DCAP: "rtmr3",
    FORMAT_SEV_SNP: "host_data",
    FORMAT_TPM_QUOTE: "pcr",
    FORMAT_AZURE_SNP_VTPM: "pcr",
}


def _launch(
    evidence: Evidence, trust: TrustAnchors, *, now: float, max_age_s: float
) -> VerifiedClaims:
    """A confidential VM's measured launch (:mod:`sealserve.attest._launch_log`): verify the
    hardware evidence, replay the launch log against the register it reports, find the
    process's launch in the log and the binding of its report_data in the hardware's."""
    from sealserve.attest._launch_log import LaunchEvidence, LaunchLogMismatch

    try:
        launch = LaunchEvidence.from_raw(evidence.raw)
    except LaunchLogMismatch as exc:
        raise Rejected(f"launch:{exc}") from None
    inner_evidence = Evidence.from_bytes(launch.platform)
    kind = _LAUNCH_REGISTERS.get(inner_evidence.format)
    if kind is None or not launch.register.startswith(kind):
        raise Rejected(f"launch:register_{launch.register}_for_{inner_evidence.format}")
    inner = backend_claims(inner_evidence, trust, now=now, max_age_s=max_age_s)
    if launch.register == "rtmr3":
        if len(inner.rtmrs) != 4:
            raise Rejected("launch:no_rtmr3")
        register = bytes.fromhex(inner.rtmrs[3])
    elif launch.register == "host_data":
        if inner.snp is None:
            raise Rejected("launch:no_host_data")
        register = inner.snp.report.host_data
    else:
        index = int(launch.register.rsplit(".", 1)[1])
        quoted = (inner.pcrs or {}).get("sha256", {})
        if index not in quoted:
            raise Rejected("launch:register_not_quoted")
        register = quoted[index]
    try:
        launch.check(register_value=register, platform_report_data=inner.report_data)
    except LaunchLogMismatch as exc:
        raise Rejected(f"launch:{exc}") from None
    return dataclasses.replace(
        inner,
        format=FORMAT_LAUNCH,
        measurement=launch.measurement.hex(),
        report_data=launch.report_data,
        entry=launch.entry,
        platform_format=inner.format,
        platform_measurement=inner.measurement,
    )
