"""The wire forms of SEV-SNP, TPM-quote and Azure-CVM evidence, and their unverified views.

* ``sev-snp``: ``raw`` is the 1,184-byte report as the firmware returned it; ``collateral``,
  when present, is the host's certificate table (configfs-tsm's ``auxblob``: VCEK or VLEK,
  and usually ASK and ARK).  The report's report_data is sealserve's report_data.
* ``tpm-quote``: ``raw`` is a canonical mapping (:class:`TpmBundle`): the TPMS_ATTEST, the
  TPMT_SIGNATURE, the 64-byte report_data whose SHA-256 is the quote's extraData, the PCR values
  (``pcr.<bank>.<index>``) and the AK's certificate chain (``ak.0`` the AK's own, then
  intermediates).
* ``azure-snp-vtpm``: ``raw`` is a canonical mapping (:class:`AzureBundle`): the HCL report, the
  quote, its signature and PCR values as for a TPM quote, and the certificates that came with
  the report (``cert.0``..., the VCEK at least).

The parsed :class:`~sealserve.attest.Evidence` is an unverified view, like every other:
:func:`~sealserve.attest.verify_evidence` trusts nothing of it before the backend check.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Final

from sealserve.attest._azure import HclReport
from sealserve.attest._certs import Rejected
from sealserve.attest._evidence import (
    FORMAT_AZURE_SNP_VTPM,
    FORMAT_SEV_SNP,
    FORMAT_TPM_QUOTE,
    REPORT_DATA_BYTES,
    Evidence,
)
from sealserve.attest._snp import SnpReport
from sealserve.attest._tpm import BANKS, PCR_COUNT, TpmQuote, TpmSignature
from sealserve.crypto import canonical_decode, canonical_encode

__all__ = ["AzureBundle", "TpmBundle", "parse_hw_evidence", "snp_evidence"]

_PCR_KEY: Final = re.compile(r"pcr\.(sha256|sha384|sha512)\.([0-9]|1[0-9]|2[0-3])")
_LIST_KEY: Final = re.compile(r"(ak|cert)\.([0-9])")
_MAX_LIST: Final = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpmBundle:
    """What TPM-quote evidence carries (see the module docstring)."""

    attest: bytes
    signature: bytes
    report_data: bytes
    pcrs: Mapping[str, Mapping[int, bytes]]
    ak_chain: tuple[bytes, ...] = ()

    def to_raw(self) -> bytes:
        fields: dict[str, str | int | bytes] = {
            "attest": self.attest,
            "signature": self.signature,
            "report_data": self.report_data,
        }
        fields.update(_pcr_fields(self.pcrs))
        fields.update(_list_fields("ak", self.ak_chain))
        return canonical_encode(fields)

    @classmethod
    def from_raw(cls, raw: bytes) -> TpmBundle:
        fields = _decode(raw, required={"attest", "signature", "report_data"}, lists={"ak"})
        return cls(
            attest=_bytes(fields, "attest"),
            signature=_bytes(fields, "signature"),
            report_data=_report_data(fields),
            pcrs=_pcrs(fields),
            ak_chain=_list(fields, "ak"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AzureBundle:
    """What Azure-CVM evidence carries (see the module docstring)."""

    hcl_report: bytes
    attest: bytes
    signature: bytes
    report_data: bytes
    pcrs: Mapping[str, Mapping[int, bytes]]
    certificates: tuple[bytes, ...] = ()

    def to_raw(self) -> bytes:
        fields: dict[str, str | int | bytes] = {
            "hcl_report": self.hcl_report,
            "attest": self.attest,
            "signature": self.signature,
            "report_data": self.report_data,
        }
        fields.update(_pcr_fields(self.pcrs))
        fields.update(_list_fields("cert", self.certificates))
        return canonical_encode(fields)

    @classmethod
    def from_raw(cls, raw: bytes) -> AzureBundle:
        required = {"hcl_report", "attest", "signature", "report_data"}
        fields = _decode(raw, required=required, lists={"cert"})
        return cls(
            hcl_report=_bytes(fields, "hcl_report"),
            attest=_bytes(fields, "attest"),
            signature=_bytes(fields, "signature"),
            report_data=_report_data(fields),
            pcrs=_pcrs(fields),
            certificates=_list(fields, "cert"),
        )


def snp_evidence(report: bytes, *, cert_table: bytes | None = None) -> Evidence:
    """SEV-SNP evidence from a report and, if the host supplied one, its certificate table."""
    return parse_hw_evidence(FORMAT_SEV_SNP, bytes(report), cert_table)


def parse_hw_evidence(fmt: str, raw: bytes, collateral: bytes | None) -> Evidence:
    """The unverified view of hardware evidence; ``Rejected`` if it does not parse."""
    if fmt == FORMAT_SEV_SNP:
        report = SnpReport.parse(raw)
        return Evidence(
            format=fmt,
            measurement=report.measurement,
            report_data=report.report_data,
            raw=raw,
            debug=report.debug,
            collateral=collateral,
        )
    if collateral is not None:
        raise Rejected("this format carries no collateral")
    if fmt == FORMAT_TPM_QUOTE:
        bundle = TpmBundle.from_raw(raw)
        quote = TpmQuote.parse(bundle.attest)
        TpmSignature.parse(bundle.signature)
        return Evidence(
            format=fmt,
            measurement=quote.pcr_digest,
            report_data=bundle.report_data,
            raw=raw,
            debug=False,
        )
    if fmt == FORMAT_AZURE_SNP_VTPM:
        azure = AzureBundle.from_raw(raw)
        report = SnpReport.parse(HclReport.parse(azure.hcl_report).snp_report)
        TpmQuote.parse(azure.attest)
        TpmSignature.parse(azure.signature)
        return Evidence(
            format=fmt,
            measurement=report.measurement,
            report_data=azure.report_data,
            raw=raw,
            debug=report.debug,
        )
    raise Rejected(f"format {fmt!r} is not hardware evidence")


def _pcr_fields(pcrs: Mapping[str, Mapping[int, bytes]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for bank, values in pcrs.items():
        if bank not in BANKS.values():
            raise ValueError(f"PCR bank must be one of {sorted(BANKS.values())}, got {bank!r}")
        for index, value in values.items():
            if not 0 <= index < PCR_COUNT:
                raise ValueError(f"PCR index must be 0..{PCR_COUNT - 1}, got {index}")
            out[f"pcr.{bank}.{index}"] = bytes(value)
    return out


def _list_fields(prefix: str, items: Sequence[bytes]) -> dict[str, bytes]:
    if len(items) > _MAX_LIST:
        raise ValueError(f"at most {_MAX_LIST} {prefix} entries, got {len(items)}")
    return {f"{prefix}.{i}": bytes(item) for i, item in enumerate(items)}


def _decode(raw: bytes, *, required: set[str], lists: set[str]) -> dict[str, bytes]:
    try:
        fields = canonical_decode(raw)
    except ValueError:
        raise Rejected("evidence: not a canonical mapping") from None
    out: dict[str, bytes] = {}
    for key, value in fields.items():
        if not isinstance(value, bytes):
            raise Rejected(f"evidence: {key} is not bytes")
        list_key = _LIST_KEY.fullmatch(key)
        listed = list_key is not None and list_key.group(1) in lists
        if key not in required and not _PCR_KEY.fullmatch(key) and not listed:
            raise Rejected(f"evidence: unknown field {key[:32]!r}")
        out[key] = value
    if not required <= set(out):
        raise Rejected("evidence: a required field is missing")
    return out


def _bytes(fields: Mapping[str, bytes], key: str) -> bytes:
    return fields[key]


def _report_data(fields: Mapping[str, bytes]) -> bytes:
    value = fields["report_data"]
    if len(value) != REPORT_DATA_BYTES:
        raise Rejected("evidence: report_data is not 64 bytes")
    return value


def _pcrs(fields: Mapping[str, bytes]) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    for key, value in fields.items():
        match = _PCR_KEY.fullmatch(key)
        if match is not None:
            out.setdefault(match.group(1), {})[int(match.group(2))] = value
    return out


def _list(fields: Mapping[str, bytes], prefix: str) -> tuple[bytes, ...]:
    items = []
    for i in range(_MAX_LIST + 1):
        value = fields.get(f"{prefix}.{i}")
        if value is None:
            break
        items.append(value)
    count = sum(1 for key in fields if key.startswith(f"{prefix}."))
    if count != len(items):
        raise Rejected(f"evidence: the {prefix} entries are not numbered 0, 1, ...")
    return tuple(items)
