"""AMD's SEV-SNP key hierarchy: pinned roots per product line, the certificate table, TCBs.

AMD signs every SEV-SNP report with a chip's **VCEK** (or a cloud's **VLEK**), certified by the
product line's **ASK** (or **ASVK**), certified by the product line's self-signed **ARK**.  The
ARKs are the trust anchors: :data:`ARK_SPKI_SHA256` pins the SHA-256 of each one's public key
(SubjectPublicKeyInfo), taken from AMD's public certificates (KDS
``/vcek/v1/{Milan,Genoa,Turin}/cert_chain``).  The certificates themselves come with the
evidence (the host's certificate table) or from a cache the operator fills from AMD's KDS
(:class:`SnpAnchors.from_cache`, ``sealserve attest snp-cache fill``); nothing here reaches
the network.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from cryptography import x509

from sealserve.attest._certs import (
    Rejected,
    load_certificate,
    load_certificates,
    load_crl,
    spki_sha256,
)

__all__ = [
    "ARK_SPKI_SHA256",
    "GUID_ARK",
    "GUID_ASK",
    "GUID_VCEK",
    "GUID_VLEK",
    "PRODUCTS",
    "TCB_FIELDS",
    "AmdCert",
    "SnpAnchors",
    "TcbVersion",
    "build_cert_table",
    "classify",
    "parse_cert_table",
]

PRODUCTS: Final = ("Milan", "Genoa", "Turin")

#: SHA-256 of each ARK's SubjectPublicKeyInfo (AMD's RSA-4096 root per product line).
ARK_SPKI_SHA256: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Milan": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
        "Genoa": "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
        "Turin": "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
    }
)

# The GUIDs of the host's certificate table (GHCB specification, extended guest request).
GUID_VCEK: Final = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK: Final = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK: Final = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK: Final = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_MAX_TABLE_ENTRIES: Final = 16
_TABLE_ENTRY: Final = struct.Struct("<16sII")

#: The components of a TCB version, in the order AMD's KDS names them.
TCB_FIELDS: Final = ("fmc", "bootloader", "tee", "snp", "microcode")
# Byte offsets of each component in the 8-byte TCB_VERSION, per product line.
_TCB_LAYOUT: Final[Mapping[str, Mapping[str, int]]] = MappingProxyType(
    {
        "Milan": {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
        "Genoa": {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
        "Turin": {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7},
    }
)
# The VCEK/VLEK extensions (OID 1.3.6.1.4.1.3704.1.3.x) carrying each component.
_TCB_OIDS: Final = {
    "bootloader": "1.3.6.1.4.1.3704.1.3.1",
    "tee": "1.3.6.1.4.1.3704.1.3.2",
    "snp": "1.3.6.1.4.1.3704.1.3.3",
    "microcode": "1.3.6.1.4.1.3704.1.3.8",
    "fmc": "1.3.6.1.4.1.3704.1.3.9",
}
_OID_HWID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
_OID_PRODUCT: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")


@dataclasses.dataclass(frozen=True, slots=True)
class TcbVersion:
    """An 8-byte SEV-SNP TCB_VERSION, read with its product line's layout."""

    raw: bytes
    product: str

    def __post_init__(self) -> None:
        if len(self.raw) != 8:
            raise ValueError(f"a TCB version is 8 bytes, got {len(self.raw)}")
        if self.product not in _TCB_LAYOUT:
            raise ValueError(f"product must be one of {PRODUCTS}, got {self.product!r}")

    def components(self) -> dict[str, int]:
        """Each component's security patch level (SPL)."""
        return {name: self.raw[at] for name, at in _TCB_LAYOUT[self.product].items()}

    def meets(self, minimum: Mapping[str, int]) -> bool:
        """Every component is at least ``minimum``'s (components it does not name: any)."""
        parts = self.components()
        return all(parts.get(name, 0) >= level for name, level in minimum.items())

    @classmethod
    def from_components(cls, product: str, parts: Mapping[str, int]) -> TcbVersion:
        if product not in _TCB_LAYOUT:
            raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
        raw = bytearray(8)
        for name, at in _TCB_LAYOUT[product].items():
            level = parts.get(name, 0)
            if not 0 <= level <= 0xFF:
                raise ValueError(f"TCB component {name} must be 0..255, got {level}")
            raw[at] = level
        return cls(bytes(raw), product)


@dataclasses.dataclass(frozen=True, slots=True)
class AmdCert:
    """A certificate of AMD's hierarchy, classified by its subject."""

    #: "ark", "ask", "asvk", "vcek" or "vlek".
    role: str
    #: "Milan", "Genoa" or "Turin" (from the subject, or for a VCEK/VLEK its issuer).
    product: str
    cert: x509.Certificate


def classify(cert: x509.Certificate) -> AmdCert | None:
    """The role and product line of one of AMD's certificates, or None if it is not one."""
    subject, issuer = _common_name(cert.subject), _common_name(cert.issuer)
    for product in PRODUCTS:
        if subject == f"ARK-{product}":
            return AmdCert("ark", product, cert)
        if subject == f"SEV-{product}" and issuer == f"ARK-{product}":
            return AmdCert("ask", product, cert)
        if subject == f"SEV-VLEK-{product}" and issuer == f"ARK-{product}":
            return AmdCert("asvk", product, cert)
        if subject == "SEV-VCEK" and issuer == f"SEV-{product}":
            return AmdCert("vcek", product, cert)
        if subject == "SEV-VLEK" and issuer == f"SEV-VLEK-{product}":
            return AmdCert("vlek", product, cert)
    return None


def leaf_tcb(leaf: AmdCert) -> TcbVersion:
    """The TCB a VCEK or VLEK was issued for, from its 1.3.6.1.4.1.3704.1.3.x extensions."""
    parts: dict[str, int] = {}
    for name in _TCB_LAYOUT[leaf.product]:
        value = _extension_bytes(leaf.cert, _TCB_OIDS[name])
        if value is None:
            raise Rejected(f"the {leaf.role.upper()} has no {name} TCB extension")
        parts[name] = _der_small_int(value)
    return TcbVersion.from_components(leaf.product, parts)


def leaf_hwid(leaf: AmdCert) -> bytes | None:
    """A VCEK's hardware id (the chip id it was derived for), or None."""
    return _extension_bytes(leaf.cert, _OID_HWID.dotted_string)


def parse_cert_table(data: bytes) -> list[bytes]:
    """The certificates of a host's certificate table (the ``auxblob`` of configfs-tsm).

    The table is a list of (GUID, offset, length) entries ended by an all-zero entry, followed
    by the certificates it points into; an unknown GUID is skipped.
    """
    raw = bytes(data)
    certs: list[bytes] = []
    for index in range(_MAX_TABLE_ENTRIES + 1):
        at = index * _TABLE_ENTRY.size
        if at + _TABLE_ENTRY.size > len(raw):
            raise Rejected("certificate table: not terminated")
        guid, offset, length = _TABLE_ENTRY.unpack_from(raw, at)
        if guid == bytes(16) and offset == 0 and length == 0:
            return certs
        if index == _MAX_TABLE_ENTRIES:
            break
        if offset + length > len(raw) or length == 0:
            raise Rejected("certificate table: an entry points outside the table")
        if uuid.UUID(bytes=guid) in (GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK):
            certs.append(raw[offset : offset + length])
    raise Rejected("certificate table: too many entries")


def build_cert_table(entries: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    """A certificate table holding ``entries`` (what a host supplies; for tests and tools)."""
    items = list(entries)
    header = (len(items) + 1) * _TABLE_ENTRY.size
    table, body = bytearray(), bytearray()
    for guid, der in items:
        table += _TABLE_ENTRY.pack(guid.bytes, header + len(body), len(der))
        body += der
    table += _TABLE_ENTRY.pack(bytes(16), 0, 0)
    return bytes(table + body)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SnpAnchors:
    """What a verifier trusts for SEV-SNP: the ARK pins, and certificates and CRLs it holds.

    ``ark_pins`` maps a product line to the SHA-256 of its ARK's SubjectPublicKeyInfo (AMD's
    by default; tests pin their own).  ``certificates`` (DER or PEM) and ``crls`` are what the
    operator's cache holds: ARKs, ASKs, ASVKs, VCEKs and VLEKs, and AMD's CRLs, which are
    honoured whenever they are present.  Evidence may bring certificates of its own; every one
    must chain to a pinned ARK all the same.
    """

    ark_pins: Mapping[str, str] = dataclasses.field(default_factory=lambda: ARK_SPKI_SHA256)
    certificates: tuple[bytes, ...] = ()
    crls: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        pins = dict(self.ark_pins)
        for product, pin in pins.items():
            if product not in PRODUCTS:
                raise ValueError(f"SnpAnchors 'ark_pins' names {product!r}; one of {PRODUCTS}")
            if not (isinstance(pin, str) and len(pin) == 64 and _is_hex(pin)):
                raise ValueError(f"SnpAnchors pin for {product} is {pin!r}; 64 lowercase hex")
        object.__setattr__(self, "ark_pins", MappingProxyType(pins))
        object.__setattr__(self, "certificates", tuple(bytes(c) for c in self.certificates))
        object.__setattr__(self, "crls", tuple(bytes(c) for c in self.crls))
        try:
            parsed = [c for data in self.certificates for c in load_certificates(data)]
            parsed_crls = tuple(load_crl(data) for data in self.crls)
        except Rejected as exc:
            raise ValueError(
                f"SnpAnchors holds a certificate or CRL that is not one: {exc}"
            ) from None
        known = [a for a in (classify(c) for c in parsed) if a is not None]
        object.__setattr__(self, "_certs", tuple(known))
        object.__setattr__(self, "_crls", parsed_crls)

    def _key(self) -> tuple[object, ...]:
        return (tuple(sorted(self.ark_pins.items())), self.certificates, self.crls)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SnpAnchors) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def known_certificates(self) -> tuple[AmdCert, ...]:
        """The operator's certificates, parsed and classified."""
        certs: tuple[AmdCert, ...] = object.__getattribute__(self, "_certs")
        return certs

    @property
    def parsed_crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        crls: tuple[x509.CertificateRevocationList, ...] = object.__getattribute__(self, "_crls")
        return crls

    @classmethod
    def from_cache(
        cls, cache_dir: object, *, ark_pins: Mapping[str, str] | None = None
    ) -> SnpAnchors:
        """The anchors held in a cache ``sealserve attest snp-cache fill`` wrote."""
        from sealserve.attest._snp_cache import read_cache

        certs, crls = read_cache(cache_dir)
        pins = ARK_SPKI_SHA256 if ark_pins is None else ark_pins
        return cls(ark_pins=pins, certificates=tuple(certs), crls=tuple(crls))


def load_amd_certs(blobs: Iterable[bytes]) -> list[AmdCert]:
    """Classify every certificate in ``blobs`` (DER or PEM bundles); others are ignored."""
    found = []
    for blob in blobs:
        for cert in load_certificates(blob):
            amd = classify(cert)
            if amd is not None:
                found.append(amd)
    return found


def pinned(amd: AmdCert, pins: Mapping[str, str]) -> bool:
    """An ARK whose public key is the one pinned for its product line."""
    return amd.role == "ark" and pins.get(amd.product) == spki_sha256(amd.cert)


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else ""


def _extension_bytes(cert: x509.Certificate, dotted: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(dotted))
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise Rejected("a certificate has malformed extensions") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise Rejected(f"extension {dotted} is not AMD's")
    return value.value


def _der_small_int(value: bytes) -> int:
    """A DER INTEGER in 0..255 (AMD encodes each SPL as one)."""
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[1] > 2:
        raise Rejected("a TCB extension is not a small DER INTEGER")
    body = value[2:]
    if len(body) == 2 and (body[0] != 0 or body[1] < 0x80):
        raise Rejected("a TCB extension is not minimally encoded")
    if body[0] >= 0x80 and len(body) == 1:
        raise Rejected("a TCB extension is negative")
    number = int.from_bytes(body, "big")
    if number > 0xFF:
        raise Rejected("a TCB extension is above 255")
    return number


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def product_name(cert: x509.Certificate) -> str | None:
    """A VCEK's productName extension (an IA5String such as "Milan-B0"), or None."""
    value = _extension_bytes(cert, _OID_PRODUCT.dotted_string)
    if value is None:
        return None
    if len(value) < 2 or value[0] != 0x16 or value[1] != len(value) - 2:
        raise Rejected("the productName extension is not an IA5String")
    return value[2:].decode("ascii", errors="replace")


def load_one(data: bytes) -> AmdCert | None:
    """Classify one DER or PEM certificate."""
    return classify(load_certificate(data))
