"""Intel SGX and TDX DCAP quotes, verified offline with ``dcap-qvl`` at an explicit time.

:func:`verify_dcap` checks a quote's signature chain up to Intel's root CA (or a pinned root),
the recorded collateral (TCB info, QE identity, CRLs) and their validity at ``now``, and
returns what the quote attests: the TCB status and advisories, MRENCLAVE (SGX) or MRTD (TDX),
the debug flag, report_data, and for SGX the signer, product id and SVN.  Every failure is the
fixed :class:`~sealserve.errors.AttestationError`; the reason is logged at DEBUG.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any, Final

import dcap_qvl

from sealserve._log import get_logger
from sealserve.attest._evidence import FORMAT_SGX_DCAP, FORMAT_TDX_DCAP, Evidence
from sealserve.errors import AttestationError

__all__ = ["DcapRejected", "DcapReport", "check_dcap", "parse_dcap_quote", "verify_dcap"]

_SGX_DEBUG_FLAG: Final = 0x02  # SGX ATTRIBUTES.FLAGS bit 1
_TDX_DEBUG_FLAG: Final = 0x01  # TDX TD_ATTRIBUTES bit 0 (TUD.DEBUG)
_MAX_QUOTE_BYTES: Final = 64 * 1024
_MAX_COLLATERAL_BYTES: Final = 1024 * 1024

_log = get_logger(__name__)


class DcapRejected(Exception):
    """Why a quote did not verify (for operator tools; callers get ``AttestationError``)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DcapReport:
    """What a verified DCAP quote attests."""

    tee: str  # "SGX" or "TDX"
    status: str
    advisories: tuple[str, ...]
    #: MRENCLAVE (SGX, 32 bytes) or MRTD (TDX, 48 bytes).
    measurement: bytes
    debug: bool
    report_data: bytes
    #: MRSIGNER (SGX); None for TDX.
    signer: bytes | None
    product_id: int | None
    svn: int | None
    #: RTMR0..3 (TDX); empty for SGX.
    rtmrs: tuple[bytes, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The JSON form ``sealserve attest verify-dcap --json`` prints."""
        return {
            "status": self.status,
            "advisories": list(self.advisories),
            "measurement": self.measurement.hex(),
            "debug": self.debug,
            "tee": self.tee,
            "report_data": self.report_data.hex(),
            "signer": None if self.signer is None else self.signer.hex(),
            "product_id": self.product_id,
            "svn": self.svn,
        }


def verify_dcap(
    quote: bytes,
    collateral: bytes | str | Mapping[str, Any],
    *,
    now: int,
    root_ca_der: bytes | None = None,
) -> DcapReport:
    """Verify ``quote`` with its recorded ``collateral`` at Unix time ``now``."""
    try:
        return check_dcap(quote, collateral, now=now, root_ca_der=root_ca_der)
    except DcapRejected as exc:
        _log.event("dcap.rejected", level=logging.DEBUG, reason=str(exc))
        raise AttestationError() from None


def check_dcap(
    quote: bytes,
    collateral: bytes | str | Mapping[str, Any],
    *,
    now: int,
    root_ca_der: bytes | None = None,
) -> DcapReport:
    """Like :func:`verify_dcap`, but raise :class:`DcapRejected` with the reason."""
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise TypeError(f"now must be a non-negative int (Unix seconds), got {now!r}")
    raw = bytes(quote)
    if not 0 < len(raw) <= _MAX_QUOTE_BYTES:
        raise DcapRejected(f"a quote is 1 to {_MAX_QUOTE_BYTES} bytes, got {len(raw)}")
    parsed_collateral = _load_collateral(collateral)
    try:
        if root_ca_der is None:
            verified = dcap_qvl.verify(raw, parsed_collateral, now)
        else:
            verified = dcap_qvl.verify_with_root_ca(raw, parsed_collateral, root_ca_der, now)
        doc = json.loads(verified.to_json())
    except ValueError as exc:
        raise DcapRejected(str(exc).splitlines()[0] if str(exc) else "verification failed") from exc
    return _report_from_verified(doc)


def parse_dcap_quote(quote: bytes, collateral: bytes) -> Evidence:
    """The unverified :class:`Evidence` of a quote; the fixed error if it does not parse."""
    if not 0 < len(quote) <= _MAX_QUOTE_BYTES or len(collateral) > _MAX_COLLATERAL_BYTES:
        _log.event("dcap.malformed", level=logging.DEBUG, reason="size")
        raise AttestationError()
    try:
        parsed = dcap_qvl.parse_quote(quote)
        report = parsed.report
        if parsed.is_sgx():
            flags = int.from_bytes(bytes(report.attributes)[:8], "little")
            return Evidence(
                format=FORMAT_SGX_DCAP,
                measurement=bytes(report.mr_enclave),
                report_data=bytes(report.report_data),
                raw=quote,
                debug=bool(flags & _SGX_DEBUG_FLAG),
                signer=bytes(report.mr_signer),
                collateral=collateral,
            )
        attributes = int.from_bytes(bytes(report.td_attributes)[:8], "little")
        return Evidence(
            format=FORMAT_TDX_DCAP,
            measurement=bytes(report.mr_td),
            report_data=bytes(report.report_data),
            raw=quote,
            debug=bool(attributes & _TDX_DEBUG_FLAG),
            collateral=collateral,
        )
    except (ValueError, AttributeError, TypeError) as exc:
        _log.event("dcap.malformed", level=logging.DEBUG, reason=type(exc).__name__)
        raise AttestationError() from None


def _load_collateral(collateral: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(collateral, Mapping):
        text = json.dumps(collateral)
    elif isinstance(collateral, bytes | bytearray):
        if len(collateral) > _MAX_COLLATERAL_BYTES:
            raise DcapRejected("collateral is too large")
        try:
            text = bytes(collateral).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DcapRejected("collateral is not UTF-8 JSON") from exc
    elif isinstance(collateral, str):
        text = collateral
    else:
        raise TypeError(f"collateral must be JSON bytes, str or a mapping, got {type(collateral)}")
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except ValueError as exc:
        raise DcapRejected(f"collateral is not valid: {exc}") from exc


def _report_from_verified(doc: Mapping[str, Any]) -> DcapReport:
    try:
        status = str(doc["status"])
        advisories = tuple(str(a) for a in doc.get("advisory_ids") or ())
        ((kind, body),) = dict(doc["report"]).items()
        report_data = bytes.fromhex(body["report_data"])
        if kind == "SgxEnclave":
            flags = int.from_bytes(bytes.fromhex(body["attributes"])[:8], "little")
            return DcapReport(
                tee="SGX",
                status=status,
                advisories=advisories,
                measurement=bytes.fromhex(body["mr_enclave"]),
                debug=bool(flags & _SGX_DEBUG_FLAG),
                report_data=report_data,
                signer=bytes.fromhex(body["mr_signer"]),
                product_id=int(body["isv_prod_id"]),
                svn=int(body["isv_svn"]),
            )
        if kind.startswith("TD"):
            attributes = int.from_bytes(bytes.fromhex(body["td_attributes"])[:8], "little")
            return DcapReport(
                tee="TDX",
                status=status,
                advisories=advisories,
                measurement=bytes.fromhex(body["mr_td"]),
                debug=bool(attributes & _TDX_DEBUG_FLAG),
                report_data=report_data,
                signer=None,
                product_id=None,
                svn=None,
                rtmrs=tuple(bytes.fromhex(body[f"rt_mr{i}"]) for i in range(4)),
            )
    except (KeyError, ValueError, TypeError) as exc:
        raise DcapRejected(f"unexpected verified report layout: {exc!r}") from exc
    raise DcapRejected(f"unsupported report type {kind!r}")
