"""Synthetic hardware evidence, in the real layouts, signed by keys generated on the spot.

For tests and benchmarks only: a verifier trusts none of it unless it is handed this module's
roots explicitly (:meth:`SyntheticAmd.anchors`, :meth:`SyntheticTpm.anchors`), since AMD's ARKs
are pinned by default and bare TPM quotes need roots.  It lets the verifiers' tests run on a
fresh clone and lets ``sealserve bench keyservice`` time a release for each kind of evidence:

* :class:`SyntheticAmd`: an ARK, ASK and ASVK for one product line (RSA, PSS SHA-384 with salt
  48 as AMD signs), VCEKs and VLEKs (ECDSA P-384) carrying the TCB and hardware-id extensions,
  CRLs, and SEV-SNP reports (:meth:`SyntheticAmd.report`) signed in the ABI's layout;
* :class:`SyntheticTpm`: an attestation key with a certificate from a test CA, and quotes
  (TPMS_ATTEST and TPMT_SIGNATURE) over given PCR values;
* :func:`hcl_report`: an Azure HCL report around an SNP report and runtime claims.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sealserve.attest._amd import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    SnpAnchors,
    TcbVersion,
    build_cert_table,
)
from sealserve.attest._certs import spki_sha256
from sealserve.attest._evidence import FORMAT_AZURE_SNP_VTPM, FORMAT_TPM_QUOTE, Evidence
from sealserve.attest._hw_evidence import AzureBundle, TpmBundle, snp_evidence
from sealserve.attest._snp import SNP_REPORT_BYTES
from sealserve.attest._tpm import (
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    TpmAnchors,
    TpmSignature,
    pcr_digest,
    tpm_qualifying_data,
)

__all__ = ["SyntheticAmd", "SyntheticTpm", "azure_evidence", "hcl_report", "tpms_attest"]

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_CPUID: Final = {
    "Milan": (0x19, 0x01, 0x01),
    "Genoa": (0x19, 0x11, 0x01),
    "Turin": (0x1A, 0x02, 0x00),
}
_TCB_OIDS: Final = {
    "bootloader": "1.3.6.1.4.1.3704.1.3.1",
    "tee": "1.3.6.1.4.1.3704.1.3.2",
    "snp": "1.3.6.1.4.1.3704.1.3.3",
    "microcode": "1.3.6.1.4.1.3704.1.3.8",
    "fmc": "1.3.6.1.4.1.3704.1.3.9",
}
_ALG_IDS: Final = {"sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Synthetic Test Hardware"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


class SyntheticAmd:
    """A test AMD key hierarchy for one product line (see the module docstring)."""

    def __init__(
        self,
        product: str = "Milan",
        *,
        not_before: int = 1_600_000_000,
        not_after: int = 2_400_000_000,
        ark_name: str | None = None,
    ) -> None:
        if product not in _CPUID:
            raise ValueError(f"product must be one of {sorted(_CPUID)}, got {product!r}")
        self.product = product
        self.not_before = not_before
        self.not_after = not_after
        self._ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._asvk_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ark = ark_name or f"ARK-{product}"
        self.ark = self._ca(_name(ark), _name(ark), self._ark_key, self._ark_key, None)
        self.ask = self._ca(_name(f"SEV-{product}"), _name(ark), self._ask_key, self._ark_key, 0)
        self.asvk = self._ca(
            _name(f"SEV-VLEK-{product}"), _name(ark), self._asvk_key, self._ark_key, 0
        )

    @property
    def ark_pin(self) -> str:
        return spki_sha256(self.ark)

    def der(self, cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    def anchors(
        self, *, with_chain: bool = True, crls: Sequence[bytes] = (), extra: Sequence[bytes] = ()
    ) -> SnpAnchors:
        """Anchors pinning this hierarchy's ARK (and holding ARK, ASK and ASVK if asked)."""
        chain = (self.der(self.ark), self.der(self.ask), self.der(self.asvk)) if with_chain else ()
        return SnpAnchors(
            ark_pins={self.product: self.ark_pin},
            certificates=chain + tuple(extra),
            crls=tuple(crls),
        )

    def leaf(
        self,
        *,
        role: str = "vcek",
        tcb: Mapping[str, int],
        chip_id: bytes = b"",
        not_before: int | None = None,
        not_after: int | None = None,
        serial: int = 1,
        tcb_override: Mapping[str, int] | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A VCEK (for ``chip_id``) or VLEK certifying ``tcb``'s components, and its key."""
        key = ec.generate_private_key(ec.SECP384R1())
        issuer_key, issuer = (
            (self._ask_key, self.ask) if role == "vcek" else (self._asvk_key, self.asvk)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK" if role == "vcek" else "SEV-VLEK"))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(_at(self.not_before if not_before is None else not_before))
            .not_valid_after(_at(self.not_after if not_after is None else not_after))
        )
        parts = dict(tcb) if tcb_override is None else dict(tcb_override)
        for name, level in parts.items():
            builder = builder.add_extension(_unrecognized(_TCB_OIDS[name], _der_int(level)), False)
        if role == "vcek":
            builder = builder.add_extension(_unrecognized("1.3.6.1.4.1.3704.1.4", chip_id), False)
        product = bytes([0x16, len(self.product)]) + self.product.encode()
        builder = builder.add_extension(_unrecognized("1.3.6.1.4.1.3704.1.2", product), False)
        cert = builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_PSS)
        return key, cert

    def crl(self, *, revoked: Sequence[int], this_update: int, next_update: int) -> bytes:
        """A CRL signed by the ARK, revoking ``revoked`` serial numbers (of ASKs or leaves)."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(_at(this_update))
            .next_update(_at(next_update))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(_at(this_update))
                .build()
            )
        crl = builder.sign(self._ark_key, hashes.SHA384(), rsa_padding=_PSS)
        return crl.public_bytes(serialization.Encoding.DER)

    def report(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        tcb: Mapping[str, int],
        report_data: bytes = bytes(64),
        measurement: bytes = bytes(48),
        host_data: bytes = bytes(32),
        chip_id: bytes = bytes(64),
        version: int = 3,
        policy: int = 0x30000,
        vmpl: int = 0,
        signing_key: int = 0,
        platform_info: int = 0x1,
        guest_svn: int = 0,
        cpuid: tuple[int, int, int] | None = None,
    ) -> bytes:
        """An SEV-SNP report in the ABI's layout, signed with ``key`` (r, s little-endian)."""
        raw = bytearray(SNP_REPORT_BYTES)
        struct.pack_into("<IIQ", raw, 0, version, guest_svn, policy)
        struct.pack_into("<II", raw, 0x30, vmpl, 1)
        tcb_raw = TcbVersion.from_components(self.product, tcb).raw
        raw[0x38:0x40] = tcb_raw
        struct.pack_into("<Q", raw, 0x40, platform_info)
        struct.pack_into("<I", raw, 0x48, signing_key << 2)
        raw[0x50:0x90] = _exact(report_data, 64)
        raw[0x90:0xC0] = _exact(measurement, 48)
        raw[0xC0:0xE0] = _exact(host_data, 32)
        raw[0x180:0x188] = tcb_raw
        if version >= 3:
            raw[0x188:0x18B] = bytes(_CPUID[self.product] if cpuid is None else cpuid)
        raw[0x1A0:0x1E0] = _exact(chip_id, 64)
        raw[0x1E0:0x1E8] = tcb_raw
        raw[0x1F0:0x1F8] = tcb_raw
        r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
        raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
        raw[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(raw)

    def cert_table(self, leaf: x509.Certificate, *, role: str = "vcek") -> bytes:
        """A host's certificate table holding ``leaf`` with its intermediate and the ARK."""
        if role == "vcek":
            entries = [(GUID_VCEK, self.der(leaf)), (GUID_ASK, self.der(self.ask))]
        else:
            entries = [(GUID_VLEK, self.der(leaf)), (GUID_ASK, self.der(self.asvk))]
        return build_cert_table([*entries, (GUID_ARK, self.der(self.ark))])

    def snp_evidence(
        self, report: bytes, leaf: x509.Certificate, *, role: str = "vcek"
    ) -> Evidence:
        return snp_evidence(report, cert_table=self.cert_table(leaf, role=role))

    def _ca(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        key: rsa.RSAPrivateKey,
        signer: rsa.RSAPrivateKey,
        path_length: int | None,
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_at(self.not_before))
            .not_valid_after(_at(self.not_after))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
            .sign(signer, hashes.SHA384(), rsa_padding=_PSS)
        )


class SyntheticTpm:
    """A TPM's attestation key with a certificate from a test CA, making quotes."""

    def __init__(
        self,
        *,
        scheme: str = "rsassa",
        hash_name: str = "sha256",
        not_before: int = 1_600_000_000,
        not_after: int = 2_400_000_000,
    ) -> None:
        self.scheme, self.hash = scheme, hash_name
        self._ca_key = ec.generate_private_key(ec.SECP384R1())
        self.ak_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if scheme == "ecdsa"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        ca_name = _name("Synthetic TPM AK CA")
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_at(not_before))
            .not_valid_after(_at(not_after))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(self._ca_key, hashes.SHA384())
        )
        self.ak_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Synthetic TPM AK"))
            .issuer_name(ca_name)
            .public_key(self.ak_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_at(not_before))
            .not_valid_after(_at(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .sign(self._ca_key, hashes.SHA384())
        )

    def anchors(self) -> TpmAnchors:
        return TpmAnchors(roots=(self.ca.public_bytes(serialization.Encoding.DER),))

    @property
    def ak_chain(self) -> tuple[bytes, ...]:
        return (self.ak_cert.public_bytes(serialization.Encoding.DER),)

    def quote(
        self,
        *,
        nonce: bytes,
        pcrs: Mapping[str, Mapping[int, bytes]],
        selection: Sequence[tuple[str, Sequence[int]]] | None = None,
    ) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) of a quote over ``selection`` (default: all given)."""
        chosen = selection or [(bank, sorted(values)) for bank, values in pcrs.items()]
        attest = tpms_attest(
            nonce=nonce, selection=chosen, digest=pcr_digest(chosen, pcrs, self.hash)
        )
        return attest, self.sign(attest)

    def sign(self, message: bytes) -> bytes:
        algorithm: hashes.HashAlgorithm = {
            "sha256": hashes.SHA256(),
            "sha384": hashes.SHA384(),
            "sha512": hashes.SHA512(),
        }[self.hash]
        key = self.ak_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(message, ec.ECDSA(algorithm))
        elif self.scheme == "rsapss":
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
            signature = key.sign(message, pss, algorithm)
        else:
            signature = key.sign(message, padding.PKCS1v15(), algorithm)
        return TpmSignature(scheme=self.scheme, hash=self.hash, signature=signature).to_bytes()

    def evidence(
        self,
        *,
        report_data: bytes,
        pcrs: Mapping[str, Mapping[int, bytes]],
        selection: Sequence[tuple[str, Sequence[int]]] | None = None,
    ) -> Evidence:
        """TPM-quote evidence binding sealserve's ``report_data``."""
        from sealserve.attest._hw_evidence import parse_hw_evidence

        attest, signature = self.quote(
            nonce=tpm_qualifying_data(report_data), pcrs=pcrs, selection=selection
        )
        bundle = TpmBundle(
            attest=attest,
            signature=signature,
            report_data=report_data,
            pcrs=pcrs,
            ak_chain=self.ak_chain,
        )
        return parse_hw_evidence(FORMAT_TPM_QUOTE, bundle.to_raw(), None)

    def jwk(self) -> dict[str, Any]:
        """The AK as Azure's runtime claims name it (RSA only)."""
        key = self.ak_key.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("only an RSA AK has an Azure JWK")
        numbers = key.public_numbers()
        return {
            "kid": "HCLAkPub",
            "key_ops": ["sign"],
            "kty": "RSA",
            "e": _b64url(numbers.e),
            "n": _b64url(numbers.n),
        }


def tpms_attest(
    *,
    nonce: bytes,
    selection: Sequence[tuple[str, Sequence[int]]],
    digest: bytes,
    magic: int = TPM_GENERATED_VALUE,
    kind: int = TPM_ST_ATTEST_QUOTE,
    signer: bytes = b"\x00\x0b" + bytes(32),
    clock: tuple[int, int, int, int] = (123_456, 1, 0, 1),
    firmware: int = 0x2023_0101_0000_0000,
) -> bytes:
    """A TPMS_ATTEST of a quote, in the TPM 2.0 Part 2 layout (big-endian)."""
    out = struct.pack(">IH", magic, kind)
    out += struct.pack(">H", len(signer)) + signer
    out += struct.pack(">H", len(nonce)) + nonce
    out += struct.pack(">QIIB", *clock)
    out += struct.pack(">Q", firmware)
    out += struct.pack(">I", len(selection))
    for bank, indices in selection:
        bits = 0
        for i in indices:
            bits |= 1 << i
        out += struct.pack(">HB", _ALG_IDS[bank], 3) + bits.to_bytes(3, "little")
    out += struct.pack(">H", len(digest)) + digest
    return out


def hcl_report(snp_report: bytes, claims: bytes, *, hash_type: int = 1) -> bytes:
    """An Azure HCL report: header, the SNP report, the runtime data with ``claims``."""
    header = b"HCLA" + struct.pack("<IIII", 1, 0x4C0 + 20 + len(claims), 2, 0) + bytes(12)
    runtime = struct.pack("<IIIII", 20 + len(claims), 1, 2, hash_type, len(claims)) + claims
    return header + _exact(snp_report, SNP_REPORT_BYTES) + runtime


def azure_evidence(
    amd: SyntheticAmd,
    tpm: SyntheticTpm,
    *,
    report_data: bytes,
    pcrs: Mapping[str, Mapping[int, bytes]],
    tcb: Mapping[str, int],
    measurement: bytes = bytes(48),
    chip_id: bytes = bytes(64),
) -> tuple[Evidence, bytes, x509.Certificate]:
    """Azure-CVM evidence binding ``report_data``; also the HCL report and the VCEK."""
    from sealserve.attest._hw_evidence import parse_hw_evidence

    claims = json.dumps(
        {
            "keys": [tpm.jwk()],
            "vm-configuration": {"secure-boot": True, "tpm-enabled": True},
            "user-data": "00" * 64,
        },
        separators=(",", ":"),
    ).encode()
    key, vcek = amd.leaf(tcb=tcb, chip_id=chip_id)
    report = amd.report(
        key,
        tcb=tcb,
        report_data=hashlib.sha256(claims).digest() + bytes(32),
        measurement=measurement,
        chip_id=chip_id,
    )
    hcl = hcl_report(report, claims)
    attest, signature = tpm.quote(nonce=tpm_qualifying_data(report_data), pcrs=pcrs)
    bundle = AzureBundle(
        hcl_report=hcl,
        attest=attest,
        signature=signature,
        report_data=report_data,
        pcrs=pcrs,
        certificates=(amd.der(vcek),),
    )
    return parse_hw_evidence(FORMAT_AZURE_SNP_VTPM, bundle.to_raw(), None), hcl, vcek


def _unrecognized(dotted: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(dotted), value)


def _at(ts: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


def _exact(value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"expected {size} bytes, got {len(value)}")
    return bytes(value)


def _b64url(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
