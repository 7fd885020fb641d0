"""AMD SEV-SNP attestation reports, verified offline up to AMD's pinned root at an explicit time.

:func:`verify_snp` parses a report (versions 2, 3 and later; the layout of AMD's SEV-SNP ABI
specification), finds the key its signing-key field names (a chip's VCEK or a cloud's VLEK)
among the certificates that came with it and those the verifier holds, checks ARK -> ASK (or
ASVK) -> VCEK (or VLEK) with RSA-PSS SHA-384 up to the ARK pinned for the product line, the
windows at ``now`` and AMD's CRLs when given, the report's ECDSA P-384 signature, that the
VCEK was issued for the report's TCB (its 1.3.6.1.4.1.3704.1.3.x extensions) and chip, and
returns what the report says.  What is *acceptable* (debug, VMPL, a minimum TCB, the launch
measurement, host_data...) is the policy's business: :mod:`sealserve.attest._reference`.

Every failure is the fixed :class:`~sealserve.errors.AttestationError`; the reason is logged at
DEBUG (:func:`check_snp` raises :class:`~sealserve.attest._certs.Rejected` with it instead).
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Iterable
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from sealserve._log import get_logger
from sealserve.attest._amd import (
    AmdCert,
    SnpAnchors,
    TcbVersion,
    leaf_hwid,
    leaf_tcb,
    load_amd_certs,
    pinned,
)
from sealserve.attest._certs import (
    Rejected,
    check_crls,
    check_window,
    public_key,
    remember_verified,
    verified_before,
    verify_pss_sha384,
)
from sealserve.errors import AttestationError

__all__ = ["SNP_REPORT_BYTES", "SnpAttestation", "SnpReport", "check_snp", "verify_snp"]

SNP_REPORT_BYTES: Final = 0x4A0
_SIGNED_BYTES: Final = 0x2A0
_MIN_VERSION: Final = 2
_ECDSA_P384_SHA384: Final = 1
_SIGNING_KEYS: Final = {0: "vcek", 1: "vlek"}
_MAX_CERTS: Final = 16

# Guest policy bits (SEV-SNP ABI, "Guest Policy").
_POLICY_SMT: Final = 1 << 16
_POLICY_MIGRATE_MA: Final = 1 << 18
_POLICY_DEBUG: Final = 1 << 19
# PLATFORM_INFO bit 0: SMT is enabled on the host.
_PLATFORM_SMT_EN: Final = 1 << 0

_log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SnpReport:
    """The fields of an SEV-SNP attestation report (unverified until :func:`verify_snp`)."""

    raw: bytes = dataclasses.field(repr=False)
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    current_tcb: bytes
    platform_info: int
    mask_chip_id: bool
    #: "vcek" or "vlek": which key the firmware says signed the report.
    signing_key: str
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    reported_tcb: bytes
    #: (family, model, stepping) of the CPU; None before report version 3 or when zero.
    cpuid: tuple[int, int, int] | None
    chip_id: bytes
    committed_tcb: bytes
    launch_tcb: bytes

    @property
    def debug(self) -> bool:
        """The guest policy allows debugging (the hypervisor can read and write its memory)."""
        return bool(self.policy & _POLICY_DEBUG)

    @property
    def migration_agent(self) -> bool:
        """The guest policy allows association with a migration agent."""
        return bool(self.policy & _POLICY_MIGRATE_MA)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy & _POLICY_SMT)

    @property
    def smt_enabled(self) -> bool:
        """The host runs with SMT (hyper-threading) on."""
        return bool(self.platform_info & _PLATFORM_SMT_EN)

    @classmethod
    def parse(cls, data: bytes) -> SnpReport:
        raw = bytes(data)
        if len(raw) != SNP_REPORT_BYTES:
            raise Rejected(f"an SNP report is {SNP_REPORT_BYTES} bytes, got {len(raw)}")
        version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
        vmpl, algo = struct.unpack_from("<II", raw, 0x30)
        (platform_info,) = struct.unpack_from("<Q", raw, 0x40)
        (key_info,) = struct.unpack_from("<I", raw, 0x48)
        if version < _MIN_VERSION:
            raise Rejected(f"report version {version} (at least {_MIN_VERSION})")
        if algo != _ECDSA_P384_SHA384:
            raise Rejected(f"signature algorithm {algo} (only 1, ECDSA P-384 SHA-384)")
        signing_key = _SIGNING_KEYS.get((key_info >> 2) & 0x7)
        if signing_key is None:
            raise Rejected(f"signing-key field {(key_info >> 2) & 0x7} (0 VCEK or 1 VLEK)")
        if vmpl > 3:
            raise Rejected(f"VMPL {vmpl}")
        cpuid = (raw[0x188], raw[0x189], raw[0x18A]) if version >= 3 else None
        return cls(
            raw=raw,
            version=version,
            guest_svn=guest_svn,
            policy=policy,
            family_id=raw[0x10:0x20],
            image_id=raw[0x20:0x30],
            vmpl=vmpl,
            current_tcb=raw[0x38:0x40],
            platform_info=platform_info,
            mask_chip_id=bool(key_info & 0x2),
            signing_key=signing_key,
            report_data=raw[0x50:0x90],
            measurement=raw[0x90:0xC0],
            host_data=raw[0xC0:0xE0],
            id_key_digest=raw[0xE0:0x110],
            author_key_digest=raw[0x110:0x140],
            report_id=raw[0x140:0x160],
            reported_tcb=raw[0x180:0x188],
            cpuid=None if cpuid == (0, 0, 0) else cpuid,
            chip_id=raw[0x1A0:0x1E0],
            committed_tcb=raw[0x1E0:0x1E8],
            launch_tcb=raw[0x1F0:0x1F8],
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SnpAttestation:
    """A verified SEV-SNP report: what it says, and who vouched for it."""

    report: SnpReport
    #: "Milan", "Genoa" or "Turin": the product line whose pinned ARK the chain ends at.
    product: str
    #: The reported TCB, read with the product line's layout (what the VCEK certifies).
    tcb: TcbVersion

    def summary(self) -> dict[str, Any]:
        """The JSON form ``sealserve attest verify-snp --json`` prints."""
        r = self.report
        return {
            "verified": True,
            "product": self.product,
            "version": r.version,
            "signing_key": r.signing_key,
            "measurement": r.measurement.hex(),
            "host_data": r.host_data.hex(),
            "report_data": r.report_data.hex(),
            "vmpl": r.vmpl,
            "policy": f"{r.policy:#x}",
            "debug": r.debug,
            "migration_agent": r.migration_agent,
            "smt_enabled": r.smt_enabled,
            "guest_svn": r.guest_svn,
            "reported_tcb": r.reported_tcb.hex(),
            "tcb": self.tcb.components(),
            "chip_id": r.chip_id.hex(),
        }


def verify_snp(
    report: bytes,
    *,
    now: int,
    anchors: SnpAnchors | None = None,
    certificates: Iterable[bytes] = (),
) -> SnpAttestation:
    """Verify an SEV-SNP ``report`` at Unix time ``now``.

    ``certificates`` are those that came with the report (the host's certificate table,
    parsed with :func:`~sealserve.attest._amd.parse_cert_table`, or PEM/DER files);
    ``anchors`` holds the ARK pins and the operator's cached certificates and CRLs (AMD's pins
    and nothing cached by default).
    """
    try:
        return check_snp(report, now=now, anchors=anchors, certificates=certificates)
    except Rejected as exc:
        _log.event("snp.rejected", level=logging.DEBUG, reason=str(exc))
        raise AttestationError() from None


def check_snp(
    report: bytes,
    *,
    now: int,
    anchors: SnpAnchors | None = None,
    certificates: Iterable[bytes] = (),
) -> SnpAttestation:
    """Like :func:`verify_snp`, but raise ``Rejected`` with the reason."""
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise TypeError(f"now must be a non-negative int (Unix seconds), got {now!r}")
    anchors = SnpAnchors() if anchors is None else anchors
    parsed = SnpReport.parse(report)
    blobs = list(certificates)
    if len(blobs) > _MAX_CERTS:
        raise Rejected(f"at most {_MAX_CERTS} certificates come with a report")
    pool = load_amd_certs(blobs) + list(anchors.known_certificates)
    leaf = _find_leaf(parsed, pool)
    ark, intermediate = _chain_to_pinned_ark(leaf, pool, anchors)
    for amd in (ark, intermediate, leaf):
        check_window(amd.cert, now, f"the {amd.role.upper()}")
    crls = anchors.parsed_crls
    check_crls(crls, ark.cert, [intermediate.cert], now=now)
    check_crls(crls, intermediate.cert, [leaf.cert], now=now)

    tcb = TcbVersion(parsed.reported_tcb, leaf.product)
    if leaf_tcb(leaf).raw != tcb.raw:
        raise Rejected(f"the {leaf.role.upper()} was issued for another TCB than the report's")
    if leaf.role == "vcek" and not parsed.mask_chip_id:
        hwid = leaf_hwid(leaf)
        if hwid is None or len(hwid) not in (8, 64) or parsed.chip_id[: len(hwid)] != hwid:
            raise Rejected("the VCEK was issued for another chip than the report's")
    if parsed.cpuid is not None and _product_of_cpuid(parsed.cpuid) != leaf.product:
        raise Rejected(f"the report's CPU is not a {leaf.product}")
    return SnpAttestation(report=parsed, product=leaf.product, tcb=tcb)


def _find_leaf(report: SnpReport, pool: list[AmdCert]) -> AmdCert:
    """The VCEK or VLEK (as the report's signing-key field says) whose key signed it."""
    r = int.from_bytes(report.raw[0x2A0:0x2E8], "little")
    s = int.from_bytes(report.raw[0x2E8:0x330], "little")
    if any(report.raw[0x330:SNP_REPORT_BYTES]):
        raise Rejected("the reserved bytes of the signature are not zero")
    signature = encode_dss_signature(r, s)
    candidates = [a for a in pool if a.role == report.signing_key and _issued_for(a, report)]
    if not candidates:
        raise Rejected(f"no {report.signing_key.upper()} for the report's chip and TCB is at hand")
    for amd in candidates:
        # The same report comes again where it is made once (an Azure CVM's, at boot): its
        # signature is checked once per key (a pure function of these bytes).
        memo = ("snp-report", amd.cert.public_bytes(Encoding.DER), report.raw)
        if verified_before(memo):
            return amd
        key = public_key(amd.cert)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            continue
        try:
            key.verify(signature, report.raw[:_SIGNED_BYTES], ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            continue
        remember_verified(memo)
        return amd
    raise Rejected(f"the report's signature does not verify with any {report.signing_key.upper()}")


def _issued_for(amd: AmdCert, report: SnpReport) -> bool:
    """Whether a VCEK or VLEK names the report's TCB (and, for a VCEK, its chip)."""
    try:
        if leaf_tcb(amd).raw != report.reported_tcb:
            return False
        if amd.role == "vcek" and not report.mask_chip_id:
            hwid = leaf_hwid(amd)
            return hwid is not None and len(hwid) in (8, 64) and report.chip_id[: len(hwid)] == hwid
    except Rejected:
        return False
    return True


def _chain_to_pinned_ark(
    leaf: AmdCert, pool: list[AmdCert], anchors: SnpAnchors
) -> tuple[AmdCert, AmdCert]:
    """(ARK, ASK or ASVK) certifying ``leaf`` up to the ARK pinned for its product line.

    Every candidate of the right names is tried (an untrusted host may add certificates of
    its own to the table; they cannot make a chain verify, and must not hide one that does).
    """
    role = "ask" if leaf.role == "vcek" else "asvk"
    arks = [a for a in pool if a.product == leaf.product and pinned(a, anchors.ark_pins)]
    if not arks:
        raise Rejected(f"no ARK pinned for {leaf.product} is at hand")
    middles = [
        a
        for a in pool
        if a.role == role and a.product == leaf.product and a.cert.subject == leaf.cert.issuer
    ]
    if not middles:
        raise Rejected(f"no {role.upper()} for {leaf.product} is at hand")
    reason = ""
    for ark in arks:
        for middle in middles:
            try:
                verify_pss_sha384(ark.cert, ark.cert, "the ARK")
                verify_pss_sha384(ark.cert, middle.cert, f"the {role.upper()}")
                verify_pss_sha384(middle.cert, leaf.cert, f"the {leaf.role.upper()}")
            except Rejected as exc:
                reason = str(exc)
                continue
            return ark, middle
    raise Rejected(reason)


def _product_of_cpuid(cpuid: tuple[int, int, int]) -> str | None:
    family, model, _ = cpuid
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None
