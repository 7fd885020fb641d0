"""Policies and verification: does this evidence show code we trust, bound to our nonce?

:func:`verify_evidence` does two things, in order: it establishes what the evidence *proves*
(the backend check at ``now``: a simulated platform key it pins, a DCAP quote chained to
Intel's root, an SEV-SNP report chained to AMD's, a TPM quote, an Azure CVM's chain; see
:mod:`sealserve.attest._claims`), then :func:`evaluate_policy` decides whether those claims are
acceptable (pure: no I/O, no clock), reference values for the platform part included.  Every
failure is the one fixed :class:`~sealserve.errors.AttestationError`; the reason is logged at
DEBUG.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from sealserve._log import get_logger
from sealserve.attest._certs import Rejected
from sealserve.attest._claims import VerifiedClaims, backend_claims
from sealserve.attest._evidence import FORMAT_TDX_DCAP, REPORT_DATA_BYTES, Evidence
from sealserve.attest._reference import (
    ReferenceValues,
    check_reference_values,
    needs_reference_values,
)
from sealserve.attest._trust import TrustAnchors
from sealserve.errors import AttestationError

__all__ = [
    "DEFAULT_MAX_EVIDENCE_AGE_S",
    "TCB_STATUSES",
    "Policy",
    "TrustAnchors",
    "VerifiedClaims",
    "evaluate_policy",
    "verified_claims",
    "verify_evidence",
]

#: TCB statuses a policy may accept ("Revoked" never verifies).
TCB_STATUSES: Final = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    }
)
#: How old simulated evidence may be (its nonce makes it fresh; this bounds clock games).
DEFAULT_MAX_EVIDENCE_AGE_S: Final = 300.0
_HEX = re.compile(r"[0-9a-f]+")
_POLICY_VERSION: Final = 1
_ADVISORY = re.compile(r"[A-Za-z0-9._-]{1,64}")

_log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """Which attested code may receive keys.

    Either ``measurements`` (hex MRENCLAVE / MRTD / simulated measurements, any of which is
    accepted) or ``signer`` + ``product_id`` + ``min_svn`` (SGX MRSIGNER, ISVPRODID and a
    minimum ISVSVN).  Debug enclaves are refused unless ``allow_debug``; the TCB status must
    be one of ``tcb_statuses``; with ``allowed_advisories``, every advisory the platform is
    affected by must be in that set.

    ``reference_values`` pin the platform part of a confidential VM, one document per VM image
    (:class:`~sealserve.attest.ReferenceValues`): evidence must satisfy one of them.  SEV-SNP,
    TPM and Azure CVM evidence is refused by a policy without them (the minimum TCB and the
    PCRs are theirs to set).  With reference values that pin the code (a launch measurement,
    MRTD or RTMRs, or PCRs), ``measurements`` may be empty.

    >>> Policy(measurements={"ab" * 32}).to_dict()["tcb_statuses"]
    ['UpToDate']
    """

    measurements: frozenset[str] = frozenset()
    signer: str | None = None
    product_id: int | None = None
    min_svn: int = 0
    allow_debug: bool = False
    tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allowed_advisories: frozenset[str] | None = None
    reference_values: tuple[ReferenceValues, ...] = ()

    def __post_init__(self) -> None:
        measurements = frozenset(m.lower() for m in _str_set("measurements", self.measurements))
        for m in measurements:
            if len(m) not in (64, 96) or not _HEX.fullmatch(m):
                raise ValueError(
                    f"Policy 'measurements' has value {m!r}. Not 32 or 48 bytes of lowercase hex."
                )
        object.__setattr__(self, "measurements", measurements)
        references = self.reference_values
        if isinstance(references, ReferenceValues) or not isinstance(references, Iterable):
            raise ValueError("Policy 'reference_values' must be a list of ReferenceValues.")
        references = tuple(references)
        if not all(isinstance(r, ReferenceValues) for r in references):
            raise ValueError("Policy 'reference_values' must be a list of ReferenceValues.")
        object.__setattr__(self, "reference_values", references)
        signer_route = self.signer is not None or self.product_id is not None
        pinned_by_references = bool(references) and all(r.pins_code() for r in references)
        if (measurements and signer_route) or not (
            measurements or signer_route or pinned_by_references
        ):
            raise ValueError(
                "Policy needs either 'measurements' or 'signer' and 'product_id', not both "
                "and not neither, unless its 'reference_values' pin the code "
                f"(measurements={sorted(measurements)!r}, "
                f"signer={self.signer!r}, product_id={self.product_id!r})."
            )
        if signer_route:
            if isinstance(self.signer, str):
                object.__setattr__(self, "signer", self.signer.lower())
            if not (isinstance(self.signer, str) and len(self.signer) == 64):
                raise ValueError(
                    f"Policy 'signer' has value {self.signer!r}. Not 32 bytes of lowercase hex."
                )
            if not _HEX.fullmatch(self.signer):
                raise ValueError(
                    f"Policy 'signer' has value {self.signer!r}. Not 32 bytes of lowercase hex."
                )
            _check_u16("product_id", self.product_id)
        _check_u16("min_svn", self.min_svn)
        if not isinstance(self.allow_debug, bool):
            raise ValueError(f"Policy 'allow_debug' has value {self.allow_debug!r}. Not a bool.")
        statuses = _str_set("tcb_statuses", self.tcb_statuses)
        if not statuses or statuses - TCB_STATUSES:
            raise ValueError(
                f"Policy 'tcb_statuses' has value {sorted(statuses)!r}. Must be a non-empty "
                f"subset of {sorted(TCB_STATUSES)}."
            )
        object.__setattr__(self, "tcb_statuses", statuses)
        if self.allowed_advisories is not None:
            advisories = _str_set("allowed_advisories", self.allowed_advisories)
            for a in advisories:
                if not _ADVISORY.fullmatch(a):
                    raise ValueError(f"Policy 'allowed_advisories' has value {a!r}.")
            object.__setattr__(self, "allowed_advisories", advisories)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what the KeyService stores per grant)."""
        doc: dict[str, Any] = {
            "version": _POLICY_VERSION,
            "measurements": sorted(self.measurements),
            "signer": self.signer,
            "product_id": self.product_id,
            "min_svn": self.min_svn,
            "allow_debug": self.allow_debug,
            "tcb_statuses": sorted(self.tcb_statuses),
            "allowed_advisories": (
                None if self.allowed_advisories is None else sorted(self.allowed_advisories)
            ),
        }
        if self.reference_values:
            doc["reference_values"] = [r.to_dict() for r in self.reference_values]
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Parse :meth:`to_dict`'s form; ``ValueError`` naming the bad key and value."""
        if not isinstance(data, Mapping):
            raise ValueError(f"Policy must be a JSON object, got {type(data).__name__}.")
        known = {"version", *(f.name for f in dataclasses.fields(cls))}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Policy has unknown keys {unknown}. Known: {sorted(known)}.")
        version = data.get("version", _POLICY_VERSION)
        if version != _POLICY_VERSION:
            raise ValueError(f"Policy 'version' has value {version!r}. Only 1 is supported.")
        kwargs = {k: v for k, v in data.items() if k != "version" and v is not None}
        if "reference_values" in kwargs:
            refs = kwargs["reference_values"]
            if not isinstance(refs, list):
                raise ValueError("Policy 'reference_values' must be a list of objects.")
            kwargs["reference_values"] = tuple(ReferenceValues.from_dict(r) for r in refs)
        for name in ("measurements", "tcb_statuses", "allowed_advisories"):
            if name in kwargs:
                kwargs[name] = _str_set(name, kwargs[name])
        for name in ("product_id", "min_svn"):
            if name in kwargs and (
                isinstance(kwargs[name], bool) or not isinstance(kwargs[name], int)
            ):
                raise ValueError(f"Policy {name!r} has value {kwargs[name]!r}. Not an integer.")
        return cls(**kwargs)


def verify_evidence(
    evidence: Evidence,
    policy: Policy,
    *,
    report_data: bytes,
    trust: TrustAnchors,
    now: float,
    max_age_s: float = DEFAULT_MAX_EVIDENCE_AGE_S,
) -> VerifiedClaims:
    """The verified claims of ``evidence`` if it satisfies ``policy`` and binds
    ``report_data`` (see :func:`~sealserve.attest.report_data_for`); else the fixed
    :class:`~sealserve.errors.AttestationError`.

    ``now`` is the verifier's Unix time: DCAP collateral and the certificates of SEV-SNP and
    TPM evidence must be valid then, and simulated evidence must have been issued within
    ``max_age_s`` before it.
    """
    if not isinstance(evidence, Evidence):
        raise TypeError(f"evidence must be an Evidence, got {type(evidence).__name__}")
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a Policy, got {type(policy).__name__}")
    if not isinstance(trust, TrustAnchors):
        raise TypeError(f"trust must be TrustAnchors, got {type(trust).__name__}")
    if len(report_data) != REPORT_DATA_BYTES:
        raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(report_data)}")
    try:
        claims = backend_claims(evidence, trust, now=now, max_age_s=max_age_s)
        _check_policy(claims, policy, bytes(report_data))
    except Rejected as exc:
        _log.event(
            "attestation.denied",
            level=logging.DEBUG,
            reason=str(exc),
            format=evidence.format,
            measurement=evidence.measurement.hex(),
        )
        raise AttestationError() from None
    return claims


def verified_claims(
    evidence: Evidence,
    *,
    trust: TrustAnchors,
    now: float,
    max_age_s: float = DEFAULT_MAX_EVIDENCE_AGE_S,
) -> VerifiedClaims:
    """What ``evidence`` proves under ``trust`` at ``now``, before any policy and before the
    report_data binding; the fixed :class:`~sealserve.errors.AttestationError` if it proves
    nothing (the reason at DEBUG).

    A verifier that checks many policies against one evidence (the KeyService) calls this
    once, compares ``claims.report_data`` with what it expects (constant time), then calls
    :func:`evaluate_policy` per policy.
    """
    if not isinstance(evidence, Evidence):
        raise TypeError(f"evidence must be an Evidence, got {type(evidence).__name__}")
    if not isinstance(trust, TrustAnchors):
        raise TypeError(f"trust must be TrustAnchors, got {type(trust).__name__}")
    try:
        return backend_claims(evidence, trust, now=now, max_age_s=max_age_s)
    except Rejected as exc:
        _log.event(
            "attestation.denied", level=logging.DEBUG, reason=str(exc), format=evidence.format
        )
        raise AttestationError() from None


def evaluate_policy(claims: VerifiedClaims, policy: Policy, *, report_data: bytes) -> None:
    """Decide (pure) whether verified ``claims`` satisfy ``policy`` and bind ``report_data``."""
    try:
        _check_policy(claims, policy, bytes(report_data))
    except Rejected as exc:
        _log.event("attestation.denied", level=logging.DEBUG, reason=str(exc))
        raise AttestationError() from None


def _check_policy(claims: VerifiedClaims, policy: Policy, report_data: bytes) -> None:
    if not hmac.compare_digest(claims.report_data, report_data):
        raise Rejected("report_data")
    if claims.platform_format is not None and not policy.measurements:
        # Launch evidence names a launched process: only its sealserve measurement says which
        # code it is (reference values pin the VM image, which may launch other entries).
        raise Rejected("launch:measurements_required")
    if policy.measurements:
        if claims.measurement not in policy.measurements:
            raise Rejected("measurement")
    elif policy.signer is not None:
        if claims.signer is None or claims.signer != policy.signer:
            raise Rejected("signer")
        if claims.product_id != policy.product_id:
            raise Rejected("product_id")
        if claims.svn is None or claims.svn < policy.min_svn:
            raise Rejected("svn")
    if claims.debug and not policy.allow_debug:
        raise Rejected("debug")
    if claims.tcb_status is not None and claims.tcb_status not in policy.tcb_statuses:
        raise Rejected(f"tcb_status:{claims.tcb_status}")
    if policy.allowed_advisories is not None:
        unexpected = set(claims.advisories) - policy.allowed_advisories
        if unexpected:
            raise Rejected(f"advisories:{','.join(sorted(unexpected))}")
    # Launch evidence: the reference values are the hardware evidence's (the VM image).
    platform = claims.platform_format or claims.format
    platform_measurement = claims.platform_measurement or claims.measurement
    if policy.reference_values:
        check_reference_values(
            policy.reference_values,
            fmt=platform,
            snp=claims.snp,
            pcrs=claims.pcrs,
            mrtd=platform_measurement if platform == FORMAT_TDX_DCAP else None,
            rtmrs=claims.rtmrs,
        )
    elif needs_reference_values(platform):
        raise Rejected(f"reference:required_for_{platform}")
    elif claims.tcb_status is None:  # pragma: no cover - every such kind needs references
        raise Rejected("tcb_status:none")


def _str_set(name: str, value: Iterable[str] | Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"Policy {name!r} has value {value!r}. Not a list of strings.")
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"Policy {name!r} has value {items!r}. Not a list of strings.")
    return frozenset(items)


def _check_u16(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"Policy {name!r} has value {value!r}. Not an integer in [0, 65535].")
