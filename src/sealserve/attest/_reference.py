"""Reference values: what an owner pins about the platform part of a confidential VM.

A confidential VM's evidence measures the VM image (firmware, kernel, command line) as well as
whatever runs in it.  An owner pins that platform part per VM image in a JSON file, beside the
measurements a grant names::

    {"version": 1, "name": "ubuntu-24.04-cvm-2025-06",
     "snp": {"measurements": ["<96 hex>", ...], "host_data": ["<64 hex>"],
             "min_tcb": {"Milan": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}},
             "vmpls": [0], "allow_migration_agent": false, "allow_smt": true,
             "products": ["Milan", "Genoa"], "signing_keys": ["vcek", "vlek"],
             "min_guest_svn": 0},
     "tdx": {"mrtd": ["<96 hex>"], "rtmr0": [...], "rtmr1": [...], "rtmr2": [...]},
     "tpm": {"bank": "sha256", "pcrs": {"0": ["<64 hex>"], ..., "7": [...]}}}

Each pinned register lists the values it may take (several, across an image's updates).  A
section applies to the evidence that carries that platform part: ``snp`` to SEV-SNP reports
(bare or in an Azure HCL report), ``tdx`` to TDX quotes, ``tpm`` to TPM quotes (bare or an Azure
vTPM's).  Evidence satisfies a document when the document has every section its kind needs
(SEV-SNP: ``snp``; TPM: ``tpm``; Azure: both), no section its kind lacks, and each section's
checks pass.  :func:`check_reference_values` is pure.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from sealserve.attest._amd import PRODUCTS, TCB_FIELDS
from sealserve.attest._certs import Rejected
from sealserve.attest._snp import SnpAttestation

__all__ = [
    "ReferenceValues",
    "SnpReference",
    "TdxReference",
    "TpmReference",
    "check_reference_values",
]

_VERSION: Final = 1
_HEX: Final = re.compile(r"[0-9a-f]*")
_NAME: Final = re.compile(r"[A-Za-z0-9._:+-]{0,128}")
_MAX_FILE: Final = 256 * 1024


def _fail(section: str, key: str, value: object, want: str) -> ValueError:
    return ValueError(f"Reference values {section}.{key} has value {value!r}. {want}")


def _hex_set(section: str, key: str, value: object, size: int) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _fail(section, key, value, "Not a list of hex strings.")
    out = set()
    for item in value:
        if not isinstance(item, str) or len(item) != 2 * size or not _HEX.fullmatch(item.lower()):
            raise _fail(section, key, item, f"Not {size} bytes of hex.")
        out.add(item.lower())
    return frozenset(out)


def _bool(section: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(section, key, value, "Not a bool.")
    return value


def _unknown(section: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    extra = sorted(set(data) - set(known))
    if extra:
        raise ValueError(f"Reference values {section} has unknown keys {extra}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SnpReference:
    """What an SEV-SNP report must show (see the module docstring for the JSON)."""

    #: Product line -> the minimum of each TCB component; a product not named is refused.
    min_tcb: Mapping[str, Mapping[str, int]]
    measurements: frozenset[str] = frozenset()
    host_data: frozenset[str] | None = None
    vmpls: frozenset[int] = frozenset({0})
    allow_migration_agent: bool = False
    allow_smt: bool = True
    products: frozenset[str] = frozenset(PRODUCTS)
    signing_keys: frozenset[str] = frozenset({"vcek", "vlek"})
    min_guest_svn: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.min_tcb, Mapping) or not self.min_tcb:
            raise _fail("snp", "min_tcb", self.min_tcb, "Name at least one product line.")
        tcb: dict[str, Mapping[str, int]] = {}
        for product, parts in self.min_tcb.items():
            if product not in PRODUCTS or not isinstance(parts, Mapping):
                raise _fail("snp", "min_tcb", product, f"Product lines are {list(PRODUCTS)}.")
            for name, level in parts.items():
                if name not in TCB_FIELDS or isinstance(level, bool) or not isinstance(level, int):
                    raise _fail("snp", f"min_tcb.{product}", {name: level}, f"{TCB_FIELDS}.")
                if not 0 <= level <= 255:
                    raise _fail("snp", f"min_tcb.{product}.{name}", level, "Not in 0..255.")
            tcb[product] = MappingProxyType(dict(parts))
        object.__setattr__(self, "min_tcb", MappingProxyType(tcb))
        object.__setattr__(
            self, "measurements", _hex_set("snp", "measurements", self.measurements, 48)
        )
        if self.host_data is not None:
            object.__setattr__(self, "host_data", _hex_set("snp", "host_data", self.host_data, 32))
        vmpls = frozenset(self.vmpls)
        if not vmpls or not vmpls <= {0, 1, 2, 3}:
            raise _fail("snp", "vmpls", sorted(vmpls), "A non-empty subset of 0..3.")
        object.__setattr__(self, "vmpls", vmpls)
        _bool("snp", "allow_migration_agent", self.allow_migration_agent)
        _bool("snp", "allow_smt", self.allow_smt)
        products = frozenset(self.products)
        if not products or not products <= set(PRODUCTS):
            raise _fail("snp", "products", sorted(products), f"A subset of {list(PRODUCTS)}.")
        object.__setattr__(self, "products", products)
        keys = frozenset(self.signing_keys)
        if not keys or not keys <= {"vcek", "vlek"}:
            raise _fail("snp", "signing_keys", sorted(keys), 'A subset of ["vcek", "vlek"].')
        object.__setattr__(self, "signing_keys", keys)
        svn = self.min_guest_svn
        if isinstance(svn, bool) or not isinstance(svn, int) or not 0 <= svn <= 0xFFFFFFFF:
            raise _fail("snp", "min_guest_svn", svn, "Not a u32.")

    def check(self, snp: SnpAttestation) -> None:
        report = snp.report
        if self.measurements and report.measurement.hex() not in self.measurements:
            raise Rejected("reference:snp.measurement")
        if self.host_data is not None and report.host_data.hex() not in self.host_data:
            raise Rejected("reference:snp.host_data")
        if snp.product not in self.products:
            raise Rejected("reference:snp.product")
        if report.signing_key not in self.signing_keys:
            raise Rejected("reference:snp.signing_key")
        minimum = self.min_tcb.get(snp.product)
        if minimum is None or not snp.tcb.meets(minimum):
            raise Rejected("reference:snp.min_tcb")
        if report.vmpl not in self.vmpls:
            raise Rejected("reference:snp.vmpl")
        if report.migration_agent and not self.allow_migration_agent:
            raise Rejected("reference:snp.migration_agent")
        if report.smt_enabled and not self.allow_smt:
            raise Rejected("reference:snp.smt")
        if report.guest_svn < self.min_guest_svn:
            raise Rejected("reference:snp.guest_svn")

    def to_dict(self) -> dict[str, Any]:
        return {
            "measurements": sorted(self.measurements),
            "host_data": None if self.host_data is None else sorted(self.host_data),
            "min_tcb": {p: dict(parts) for p, parts in sorted(self.min_tcb.items())},
            "vmpls": sorted(self.vmpls),
            "allow_migration_agent": self.allow_migration_agent,
            "allow_smt": self.allow_smt,
            "products": sorted(self.products),
            "signing_keys": sorted(self.signing_keys),
            "min_guest_svn": self.min_guest_svn,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnpReference:
        _unknown("snp", data, [f.name for f in dataclasses.fields(cls)])
        if "min_tcb" not in data:
            raise ValueError("Reference values snp needs 'min_tcb' (per product line).")
        kwargs = {k: v for k, v in data.items() if v is not None}
        for key in ("vmpls", "products", "signing_keys"):
            if key in kwargs:
                if isinstance(kwargs[key], str) or not isinstance(kwargs[key], list):
                    raise _fail("snp", key, kwargs[key], "Not a list.")
                if key == "vmpls" and not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in kwargs[key]
                ):
                    raise _fail("snp", key, kwargs[key], "Not a list of integers.")
                kwargs[key] = frozenset(kwargs[key])
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TdxReference:
    """The values MRTD and RTMR0-2 may take (an empty set pins nothing)."""

    mrtd: frozenset[str] = frozenset()
    rtmr0: frozenset[str] = frozenset()
    rtmr1: frozenset[str] = frozenset()
    rtmr2: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _hex_set("tdx", f.name, getattr(self, f.name), 48))
        if not any(getattr(self, f.name) for f in dataclasses.fields(self)):
            raise ValueError("Reference values tdx pins nothing: name MRTD or an RTMR.")

    def check(self, mrtd: str, rtmrs: tuple[str, ...]) -> None:
        if self.mrtd and mrtd not in self.mrtd:
            raise Rejected("reference:tdx.mrtd")
        for i, allowed in enumerate((self.rtmr0, self.rtmr1, self.rtmr2)):
            if allowed and (len(rtmrs) <= i or rtmrs[i] not in allowed):
                raise Rejected(f"reference:tdx.rtmr{i}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: sorted(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TdxReference:
        _unknown("tdx", data, [f.name for f in dataclasses.fields(cls)])
        return cls(**{k: v for k, v in data.items() if v is not None})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpmReference:
    """The values pinned PCRs of one bank may take; every pinned PCR must be quoted."""

    pcrs: Mapping[int, frozenset[str]]
    bank: str = "sha256"

    def __post_init__(self) -> None:
        sizes = {"sha256": 32, "sha384": 48, "sha512": 64}
        if self.bank not in sizes:
            raise _fail("tpm", "bank", self.bank, f"One of {sorted(sizes)}.")
        if not isinstance(self.pcrs, Mapping) or not self.pcrs:
            raise _fail("tpm", "pcrs", self.pcrs, "Pin at least one PCR.")
        pcrs: dict[int, frozenset[str]] = {}
        for index, values in self.pcrs.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 23:
                raise _fail("tpm", "pcrs", index, "PCR indices are 0..23.")
            allowed = _hex_set("tpm", f"pcrs.{index}", values, sizes[self.bank])
            if not allowed:
                raise _fail("tpm", f"pcrs.{index}", values, "List at least one value.")
            pcrs[index] = allowed
        object.__setattr__(self, "pcrs", MappingProxyType(pcrs))

    def check(self, quoted: Mapping[str, Mapping[int, bytes]]) -> None:
        bank = quoted.get(self.bank, {})
        for index, allowed in self.pcrs.items():
            value = bank.get(index)
            if value is None:
                raise Rejected(f"reference:tpm.pcr{index}.not_quoted")
            if value.hex() not in allowed:
                raise Rejected(f"reference:tpm.pcr{index}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "pcrs": {str(i): sorted(v) for i, v in sorted(self.pcrs.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TpmReference:
        _unknown("tpm", data, ["bank", "pcrs"])
        pcrs = data.get("pcrs")
        if not isinstance(pcrs, Mapping):
            raise _fail("tpm", "pcrs", pcrs, "Not an object of PCR index to values.")
        parsed: dict[int, Any] = {}
        for key, values in pcrs.items():
            if not isinstance(key, str) or not key.isdigit() or len(key) > 2:
                raise _fail("tpm", "pcrs", key, "PCR indices are 0..23.")
            parsed[int(key)] = values
        return cls(pcrs=parsed, bank=data.get("bank", "sha256"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReferenceValues:
    """One VM image's reference values: any of the three sections, at least one."""

    name: str = ""
    snp: SnpReference | None = None
    tdx: TdxReference | None = None
    tpm: TpmReference | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"Reference values name has value {self.name!r}.")
        if self.snp is None and self.tdx is None and self.tpm is None:
            raise ValueError("Reference values pin nothing: give an snp, tdx or tpm section.")

    @property
    def sections(self) -> frozenset[str]:
        return frozenset(s for s in ("snp", "tdx", "tpm") if getattr(self, s) is not None)

    def pins_code(self) -> bool:
        """Whether these values pin what runs, not only how (a launch measurement, MRTD or
        RTMRs, or PCRs)."""
        return bool(
            (self.snp is not None and (self.snp.measurements or self.snp.host_data))
            or self.tdx is not None
            or self.tpm is not None
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": _VERSION, "name": self.name}
        for section in ("snp", "tdx", "tpm"):
            value = getattr(self, section)
            if value is not None:
                doc[section] = value.to_dict()
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceValues:
        """Parse :meth:`to_dict`'s form; ``ValueError`` naming the bad key and value."""
        if not isinstance(data, Mapping):
            raise ValueError(f"Reference values must be a JSON object, got {type(data).__name__}.")
        _unknown("", data, ["version", "name", "snp", "tdx", "tpm"])
        if data.get("version", _VERSION) != _VERSION:
            raise ValueError(f"Reference values version {data.get('version')!r}; only 1.")
        sections: dict[str, Any] = {}
        for key, parser in (
            ("snp", SnpReference.from_dict),
            ("tdx", TdxReference.from_dict),
            ("tpm", TpmReference.from_dict),
        ):
            value = data.get(key)
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ValueError(f"Reference values {key} must be an object.")
            try:
                sections[key] = parser(value)
            except TypeError as exc:
                raise ValueError(f"Reference values {key}: {exc}") from None
        return cls(name=data.get("name", ""), **sections)

    @classmethod
    def from_file(cls, path: str | Path) -> ReferenceValues:
        """Read a reference-values JSON file (``ValueError`` naming the file and the problem)."""
        p = Path(path)
        try:
            if p.stat().st_size > _MAX_FILE:
                raise ValueError(f"{p}: larger than {_MAX_FILE} bytes")
            doc = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{p}: cannot read: {exc.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: not JSON: {exc}") from None
        try:
            return cls.from_dict(doc)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from None


#: The sections each evidence kind needs, and those it can satisfy at all.
_NEEDS: Final[Mapping[str, frozenset[str]]] = {
    "sev-snp": frozenset({"snp"}),
    "azure-snp-vtpm": frozenset({"snp", "tpm"}),
    "tpm-quote": frozenset({"tpm"}),
    "tdx-dcap": frozenset(),
}
_CAN: Final[Mapping[str, frozenset[str]]] = {
    "sev-snp": frozenset({"snp"}),
    "azure-snp-vtpm": frozenset({"snp", "tpm"}),
    "tpm-quote": frozenset({"tpm"}),
    "tdx-dcap": frozenset({"tdx"}),
}


def needs_reference_values(fmt: str) -> bool:
    """Whether evidence of ``fmt`` is refused by a policy without reference values."""
    return bool(_NEEDS.get(fmt))


def check_reference_values(
    documents: Iterable[ReferenceValues],
    *,
    fmt: str,
    snp: SnpAttestation | None,
    pcrs: Mapping[str, Mapping[int, bytes]] | None,
    mrtd: str | None,
    rtmrs: tuple[str, ...],
) -> None:
    """Pass if one of ``documents`` is satisfied by the platform claims; ``Rejected`` else."""
    reasons = []
    for doc in documents:
        try:
            _check_one(doc, fmt=fmt, snp=snp, pcrs=pcrs, mrtd=mrtd, rtmrs=rtmrs)
        except Rejected as exc:
            reasons.append(str(exc))
            continue
        return
    raise Rejected(";".join(reasons) if reasons else "reference:none")


def _check_one(
    doc: ReferenceValues,
    *,
    fmt: str,
    snp: SnpAttestation | None,
    pcrs: Mapping[str, Mapping[int, bytes]] | None,
    mrtd: str | None,
    rtmrs: tuple[str, ...],
) -> None:
    needs, can = _NEEDS.get(fmt), _CAN.get(fmt)
    if needs is None or can is None or not doc.sections <= can or not needs <= doc.sections:
        raise Rejected(f"reference:sections_for_{fmt}")
    if doc.snp is not None:
        if snp is None:
            raise Rejected("reference:snp.missing")
        doc.snp.check(snp)
    if doc.tpm is not None:
        if pcrs is None:
            raise Rejected("reference:tpm.missing")
        doc.tpm.check(pcrs)
    if doc.tdx is not None:
        if mrtd is None:
            raise Rejected("reference:tdx.missing")
        doc.tdx.check(mrtd, rtmrs)
