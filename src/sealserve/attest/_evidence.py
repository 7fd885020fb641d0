"""Evidence: what a TEE says about the code it runs, and the report_data that binds a key.

An :class:`Evidence` is the *unverified* view of an attestation: its fields are parsed from
``raw`` so that a caller can log or route on them, but nothing in it is to be believed until
:func:`~sealserve.attest.verify_evidence` has checked ``raw`` against trust anchors.  On the
wire it is :meth:`Evidence.to_bytes` (the canonical encoding of format, raw and, for DCAP, the
recorded collateral that travels with the quote).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Final, NoReturn

from sealserve._log import get_logger
from sealserve.crypto import canonical_decode, canonical_encode
from sealserve.errors import AttestationError

__all__ = [
    "Evidence",
    "FORMATS",
    "FORMAT_AZURE_SNP_VTPM",
    "FORMAT_LAUNCH",
    "FORMAT_SEV_SNP",
    "FORMAT_SGX_DCAP",
    "FORMAT_SIMULATED",
    "FORMAT_TDX_DCAP",
    "FORMAT_TPM_QUOTE",
    "REPORT_DATA_BYTES",
    "report_data_for",
]

#: Evidence signed by the simulated platform (development and CI).
FORMAT_SIMULATED: Final = "sealserve-sim/1"
#: An Intel SGX DCAP quote with its recorded collateral.
FORMAT_SGX_DCAP: Final = "sgx-dcap"
#: An Intel TDX DCAP quote with its recorded collateral.
FORMAT_TDX_DCAP: Final = "tdx-dcap"
#: A confidential VM's hardware evidence with its measured launcher's launch log
#: (:mod:`sealserve.attest._launch_log`).
FORMAT_LAUNCH: Final = "sealserve-launch/1"
#: An AMD SEV-SNP attestation report, with the host's certificate table when it gave one.
FORMAT_SEV_SNP: Final = "sev-snp"
#: A TPM 2.0 quote with its PCR values and the attestation key's certificate chain.
FORMAT_TPM_QUOTE: Final = "tpm-quote"
#: An Azure confidential VM: the HCL report (SEV-SNP) and a quote of its vTPM.
FORMAT_AZURE_SNP_VTPM: Final = "azure-snp-vtpm"
FORMATS: Final = frozenset(
    {
        FORMAT_SIMULATED,
        FORMAT_SGX_DCAP,
        FORMAT_TDX_DCAP,
        FORMAT_SEV_SNP,
        FORMAT_TPM_QUOTE,
        FORMAT_AZURE_SNP_VTPM,
        FORMAT_LAUNCH,
    }
)

REPORT_DATA_BYTES: Final = 64
_MAX_WIRE_BYTES: Final = 256 * 1024
_MIN_NONCE: Final = 16
_MAX_NONCE: Final = 256
_MAX_PUBLIC_KEY: Final = 8192

_log = get_logger(__name__)


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """The 64-byte report_data that binds a fresh ``public_key`` to a verifier's ``nonce``.

    SHA-512 of the canonical encoding of both (with a label), so no other pair of key and
    nonce gives the same report_data.  The attester puts it in its evidence; the verifier
    recomputes it from the key it will wrap to and the nonce it issued.
    """
    key, nonce = bytes(public_key), bytes(nonce)
    if not 1 <= len(key) <= _MAX_PUBLIC_KEY:
        raise ValueError(f"public_key must be 1 to {_MAX_PUBLIC_KEY} bytes, got {len(key)}")
    if not _MIN_NONCE <= len(nonce) <= _MAX_NONCE:
        raise ValueError(f"nonce must be {_MIN_NONCE} to {_MAX_NONCE} bytes, got {len(nonce)}")
    encoded = canonical_encode(
        {"label": "sealserve/report-data", "public_key": key, "nonce": nonce}
    )
    return hashlib.sha512(encoded).digest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evidence:
    """An attestation as received: a format, the raw signed bytes, and fields parsed from them.

    Build one with :meth:`from_bytes` (from the wire), :meth:`from_quote` (a DCAP quote and
    its collateral) or a platform (simulated evidence); never trust its fields before
    :func:`~sealserve.attest.verify_evidence`.
    """

    format: str
    #: MRENCLAVE (SGX), MRTD (TDX), the launch MEASUREMENT (SEV-SNP, Azure CVM), the quote's
    #: PCR digest (TPM), or the simulated platform's code measurement.
    measurement: bytes
    report_data: bytes
    raw: bytes
    debug: bool
    #: The TCB status the evidence claims (simulated), or None until verified (DCAP).
    tcb_status: str | None = None
    #: MRSIGNER (SGX); None where the backend has no signer.
    signer: bytes | None = None
    product_id: int | None = None
    svn: int | None = None
    advisories: tuple[str, ...] = ()
    #: The recorded DCAP collateral (JSON) that travels with a quote, or the host's SEV-SNP
    #: certificate table; None otherwise.
    collateral: bytes | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        if len(self.report_data) != REPORT_DATA_BYTES:
            raise ValueError(
                f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(self.report_data)}"
            )

    def to_bytes(self) -> bytes:
        """The wire form; :meth:`from_bytes` inverts it."""
        fields: dict[str, str | int | bytes] = {"format": self.format, "raw": self.raw}
        if self.collateral is not None:
            fields["collateral"] = self.collateral
        return canonical_encode(fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> Evidence:
        """Parse the wire form; the fixed ``AttestationError`` if it is not evidence."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        if len(data) > _MAX_WIRE_BYTES:
            _refuse("too_large", length=len(data))
        try:
            fields = canonical_decode(data)
        except ValueError:
            _refuse("encoding")
        fmt, raw, collateral = fields.get("format"), fields.get("raw"), fields.get("collateral")
        if not isinstance(fmt, str) or not isinstance(raw, bytes):
            _refuse("fields")
        if set(fields) - {"format", "raw", "collateral"}:
            _refuse("fields")
        if fmt == FORMAT_SIMULATED:
            if collateral is not None:
                _refuse("fields")
            from sealserve.attest._simulated_evidence import parse_simulated

            return parse_simulated(raw)
        if fmt == FORMAT_LAUNCH:
            if collateral is not None:
                _refuse("fields")
            return _parse_launch(raw)
        if fmt in (FORMAT_SEV_SNP, FORMAT_TPM_QUOTE, FORMAT_AZURE_SNP_VTPM):
            from sealserve.attest._certs import Rejected
            from sealserve.attest._hw_evidence import parse_hw_evidence

            if collateral is not None and not isinstance(collateral, bytes):
                _refuse("collateral")
            try:
                return parse_hw_evidence(fmt, raw, collateral)
            except Rejected as exc:
                _log.event("evidence.malformed", level=logging.DEBUG, reason=str(exc))
                raise AttestationError() from None
        if fmt not in (FORMAT_SGX_DCAP, FORMAT_TDX_DCAP):
            _refuse("format")
        if not isinstance(collateral, bytes):
            _refuse("collateral")
        evidence = cls.from_quote(raw, collateral=collateral)
        if evidence.format != fmt:
            _refuse("format")
        return evidence

    @classmethod
    def from_quote(cls, quote: bytes, *, collateral: bytes | Mapping[str, Any]) -> Evidence:
        """Evidence from a DCAP quote (SGX or TDX) and the collateral recorded for it."""
        from sealserve.attest._dcap import parse_dcap_quote

        if isinstance(collateral, Mapping):
            collateral_bytes = json.dumps(collateral, sort_keys=True).encode()
        elif isinstance(collateral, bytes | bytearray):
            collateral_bytes = bytes(collateral)
        else:
            raise TypeError(f"collateral must be bytes or a mapping, got {type(collateral)}")
        return parse_dcap_quote(bytes(quote), collateral_bytes)


def _parse_launch(raw: bytes) -> Evidence:
    """The unverified view of launch evidence: the launched process's measurement and
    report_data, the hardware's debug flag and TCB status."""
    from sealserve.attest._launch_log import LaunchEvidence, LaunchLogMismatch

    try:
        launch = LaunchEvidence.from_raw(raw)
    except LaunchLogMismatch as exc:
        _log.event("evidence.malformed", level=logging.DEBUG, reason=f"launch:{exc}")
        raise AttestationError() from None
    inner = Evidence.from_bytes(launch.platform)
    if inner.format == FORMAT_LAUNCH:
        _refuse("nested_launch")
    return Evidence(
        format=FORMAT_LAUNCH,
        measurement=launch.measurement,
        report_data=launch.report_data,
        raw=bytes(raw),
        debug=inner.debug,
        tcb_status=inner.tcb_status,
    )


def _refuse(reason: str, **detail: int) -> NoReturn:
    _log.event("evidence.malformed", level=logging.DEBUG, reason=reason, **detail)
    raise AttestationError()
