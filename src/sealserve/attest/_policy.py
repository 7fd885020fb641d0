"""Policies and verification: does this evidence show code we trust, bound to our nonce?

:func:`verify_evidence` does two things, in order: it establishes what the evidence *proves*
(the backend check: a simulated platform key it pins, or a DCAP quote chained to Intel's
root, at ``now``), then :func:`evaluate_policy` decides whether those claims are acceptable
(pure: no I/O, no clock).  Every failure is the one fixed
:class:`~sealserve.errors.AttestationError`; the reason is logged at DEBUG.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from sealserve._log import get_logger
from sealserve.attest._evidence import (
    FORMAT_SGX_DCAP,
    FORMAT_SIMULATED,
    FORMAT_TDX_DCAP,
    REPORT_DATA_BYTES,
    Evidence,
)
from sealserve.errors import AttestationError, ConfigError

__all__ = [
    "DEFAULT_MAX_EVIDENCE_AGE_S",
    "TCB_STATUSES",
    "Policy",
    "TrustAnchors",
    "VerifiedClaims",
    "evaluate_policy",
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
_FUTURE_SKEW_S: Final = 60.0
_HEX = re.compile(r"[0-9a-f]+")
_POLICY_VERSION: Final = 1
_ADVISORY = re.compile(r"[A-Za-z0-9._-]{1,64}")

_log = get_logger(__name__)


class _Denied(Exception):
    """Internal: why verification failed (logged, never shown to the caller)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """Which attested code may receive keys.

    Either ``measurements`` (hex MRENCLAVE / MRTD / simulated measurements, any of which is
    accepted) or ``signer`` + ``product_id`` + ``min_svn`` (SGX MRSIGNER, ISVPRODID and a
    minimum ISVSVN).  Debug enclaves are refused unless ``allow_debug``; the TCB status must
    be one of ``tcb_statuses``; with ``allowed_advisories``, every advisory the platform is
    affected by must be in that set.

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

    def __post_init__(self) -> None:
        measurements = frozenset(m.lower() for m in _str_set("measurements", self.measurements))
        for m in measurements:
            if len(m) not in (64, 96) or not _HEX.fullmatch(m):
                raise ValueError(
                    f"Policy 'measurements' has value {m!r}. Not 32 or 48 bytes of lowercase hex."
                )
        object.__setattr__(self, "measurements", measurements)
        signer_route = self.signer is not None or self.product_id is not None
        if bool(measurements) == signer_route:
            raise ValueError(
                "Policy needs either 'measurements' or 'signer' and 'product_id', not both "
                f"and not neither (measurements={sorted(measurements)!r}, "
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
        return {
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
        for name in ("measurements", "tcb_statuses", "allowed_advisories"):
            if name in kwargs:
                kwargs[name] = _str_set(name, kwargs[name])
        for name in ("product_id", "min_svn"):
            if name in kwargs and (
                isinstance(kwargs[name], bool) or not isinstance(kwargs[name], int)
            ):
                raise ValueError(f"Policy {name!r} has value {kwargs[name]!r}. Not an integer.")
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustAnchors:
    """What a verifier trusts to vouch for hardware.

    ``simulated_platform_keys``: raw Ed25519 public keys of simulated platforms (pin the one
    published at ``<data-dir>/tee/platform.pub``, see :meth:`from_data_dir`).  DCAP quotes
    chain to Intel's SGX root CA (built into dcap-qvl), or to ``dcap_root_ca_der`` if set;
    ``accept_dcap=False`` refuses them altogether.
    """

    simulated_platform_keys: frozenset[bytes] = frozenset()
    accept_dcap: bool = True
    dcap_root_ca_der: bytes | None = None

    def __post_init__(self) -> None:
        keys = frozenset(bytes(k) for k in self.simulated_platform_keys)
        for key in keys:
            if len(key) != 32:
                raise ValueError(
                    f"TrustAnchors 'simulated_platform_keys' has a {len(key)}-byte key. "
                    "Ed25519 public keys are 32 bytes."
                )
        object.__setattr__(self, "simulated_platform_keys", keys)

    @classmethod
    def from_data_dir(cls, data_dir: str | Any) -> TrustAnchors:
        """Trust the simulated platform whose public key is in ``<data_dir>/tee/platform.pub``."""
        from sealserve.attest._platform_key import read_platform_public_key

        return cls(simulated_platform_keys=frozenset({read_platform_public_key(data_dir)}))

    def of_own_platform(self, own_evidence: Evidence) -> TrustAnchors:
        """These anchors narrowed to the platform that issued ``own_evidence`` (this process's
        own evidence): the simulated key that signed it, or no simulated key at all when it is
        hardware evidence.

        A verifier whose trust anchors come from its (untrusted) host uses this at start:
        its clients accept it only if its own evidence verifies under the platform they
        trust, so trusting that platform and no other leaves the host no key of its own to
        slip in.  :class:`~sealserve.errors.ConfigError` when the evidence is simulated and
        none of ``simulated_platform_keys`` signed it.
        """
        if own_evidence.format != FORMAT_SIMULATED:
            return dataclasses.replace(self, simulated_platform_keys=frozenset())
        from sealserve.attest._simulated_evidence import verify_simulated

        for key in self.simulated_platform_keys:
            try:
                verify_simulated(own_evidence.raw, (key,))
            except ValueError:
                continue
            return dataclasses.replace(self, simulated_platform_keys=frozenset({key}))
        raise ConfigError(
            "none of the given platform keys signed this process's own evidence: it would "
            "trust a platform other than the one that launched it"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifiedClaims:
    """What verified evidence proves."""

    format: str
    #: Hex MRENCLAVE / MRTD / simulated measurement.
    measurement: str
    debug: bool
    tcb_status: str
    advisories: tuple[str, ...]
    report_data: bytes
    signer: str | None = None
    product_id: int | None = None
    svn: int | None = None
    #: The simulated entry name ("runtime", "keyservice", ...); None for DCAP.
    entry: str | None = None
    #: When simulated evidence was issued (Unix seconds); None for DCAP.
    issued_at: int | None = None


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

    ``now`` is the verifier's Unix time: DCAP collateral must be valid then, and simulated
    evidence must have been issued within ``max_age_s`` before it.
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
        claims = _backend_claims(evidence, trust, now=now, max_age_s=max_age_s)
        _check_policy(claims, policy, bytes(report_data))
    except _Denied as exc:
        _log.event(
            "attestation.denied",
            level=logging.DEBUG,
            reason=str(exc),
            format=evidence.format,
            measurement=evidence.measurement.hex(),
        )
        raise AttestationError() from None
    return claims


def evaluate_policy(claims: VerifiedClaims, policy: Policy, *, report_data: bytes) -> None:
    """Decide (pure) whether verified ``claims`` satisfy ``policy`` and bind ``report_data``."""
    try:
        _check_policy(claims, policy, bytes(report_data))
    except _Denied as exc:
        _log.event("attestation.denied", level=logging.DEBUG, reason=str(exc))
        raise AttestationError() from None


def _check_policy(claims: VerifiedClaims, policy: Policy, report_data: bytes) -> None:
    if not hmac.compare_digest(claims.report_data, report_data):
        raise _Denied("report_data")
    if policy.measurements:
        if claims.measurement not in policy.measurements:
            raise _Denied("measurement")
    else:
        if claims.signer is None or claims.signer != policy.signer:
            raise _Denied("signer")
        if claims.product_id != policy.product_id:
            raise _Denied("product_id")
        if claims.svn is None or claims.svn < policy.min_svn:
            raise _Denied("svn")
    if claims.debug and not policy.allow_debug:
        raise _Denied("debug")
    if claims.tcb_status not in policy.tcb_statuses:
        raise _Denied(f"tcb_status:{claims.tcb_status}")
    if policy.allowed_advisories is not None:
        unexpected = set(claims.advisories) - policy.allowed_advisories
        if unexpected:
            raise _Denied(f"advisories:{','.join(sorted(unexpected))}")


def _backend_claims(
    evidence: Evidence, trust: TrustAnchors, *, now: float, max_age_s: float
) -> VerifiedClaims:
    if evidence.format == FORMAT_SIMULATED:
        from sealserve.attest._simulated_evidence import verify_simulated

        if not trust.simulated_platform_keys:
            raise _Denied("no_simulated_anchor")
        try:
            sim = verify_simulated(evidence.raw, trust.simulated_platform_keys)
        except ValueError as exc:
            raise _Denied(f"simulated:{exc}") from None
        if not now - max_age_s <= sim.issued_at <= now + _FUTURE_SKEW_S:
            raise _Denied("age")
        claims = VerifiedClaims(
            format=FORMAT_SIMULATED,
            measurement=sim.measurement.hex(),
            debug=sim.debug,
            tcb_status=sim.tcb_status,
            advisories=(),
            report_data=sim.report_data,
            entry=sim.entry,
            issued_at=sim.issued_at,
        )
    elif evidence.format in (FORMAT_SGX_DCAP, FORMAT_TDX_DCAP):
        from sealserve.attest._dcap import DcapRejected, check_dcap

        if not trust.accept_dcap:
            raise _Denied("dcap_not_trusted")
        if evidence.collateral is None:
            raise _Denied("no_collateral")
        try:
            report = check_dcap(
                evidence.raw, evidence.collateral, now=int(now), root_ca_der=trust.dcap_root_ca_der
            )
        except DcapRejected as exc:
            raise _Denied(f"dcap:{exc}") from None
        expected = FORMAT_SGX_DCAP if report.tee == "SGX" else FORMAT_TDX_DCAP
        if evidence.format != expected:
            raise _Denied("format")
        claims = VerifiedClaims(
            format=evidence.format,
            measurement=report.measurement.hex(),
            debug=report.debug,
            tcb_status=report.status,
            advisories=report.advisories,
            report_data=report.report_data,
            signer=None if report.signer is None else report.signer.hex(),
            product_id=report.product_id,
            svn=report.svn,
        )
    else:  # pragma: no cover - Evidence refuses unknown formats
        raise _Denied("format")
    # The convenience fields of the Evidence must say what the raw bytes prove.
    if (
        evidence.measurement.hex() != claims.measurement
        or evidence.report_data != claims.report_data
        or evidence.debug != claims.debug
    ):
        raise _Denied("fields_disagree_with_raw")
    return claims


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
