"""Azure confidential VMs: the HCL report, its runtime claims, and the vTPM quote they vouch for.

An Azure CVM's paravisor (the HCL) keeps the SEV-SNP report it obtained at boot in the vTPM's
NV index ``0x01400001``, wrapped in an **HCL report**::

    0x000  header: "HCLA", version, report size, request type, status, reserved (32 bytes;
           signed by nothing, so nothing after the magic is used)
    0x020  the SEV-SNP attestation report (1,184 bytes)
    0x4C0  runtime data: data size, version, report type (2 = SNP), hash type (1 = SHA-256,
           2 = SHA-384, 3 = SHA-512), variable data size (five little-endian u32),
           then the variable data: the runtime claims, JSON

The SNP report's report_data is the hash of the runtime claims (zero-padded to 64 bytes), and
the claims hold the vTPM's attestation key (``keys``, the RSA JWK ``HCLAkPub``).  So the chain
a verifier walks is AMD's root -> VCEK -> SNP report -> runtime claims -> AK -> the TPM quote
over the PCRs and the verifier's nonce: :func:`check_azure_cvm`.  Azure TDX CVMs use the same
layout with a TD report (type 4), which is refused here: verifying one needs the TDX quote it
was turned into, which Azure's evidence of this form does not carry.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import rsa

from sealserve._log import get_logger
from sealserve.attest._amd import SnpAnchors
from sealserve.attest._certs import Rejected
from sealserve.attest._snp import SNP_REPORT_BYTES, SnpAttestation, check_snp
from sealserve.attest._tpm import TpmQuote, TpmSignature, check_quote
from sealserve.errors import AttestationError

__all__ = ["AzureCvmAttestation", "HclReport", "check_azure_cvm", "verify_azure_cvm"]

_HCL_MAGIC: Final = b"HCLA"
_SNP_AT: Final = 0x20
_RUNTIME_AT: Final = 0x4C0
_RUNTIME_HEADER: Final = struct.Struct("<IIIII")
_RUNTIME_VERSION: Final = 1
_REPORT_TYPE_SNP: Final = 2
_REPORT_TYPE_TDX: Final = 4
_HASH_TYPES: Final = {1: "sha256", 2: "sha384", 3: "sha512"}
_MAX_HCL: Final = 16 * 1024
_MAX_CLAIMS: Final = 8 * 1024
_AK_KID: Final = "HCLAkPub"

_log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HclReport:
    """A parsed HCL report: the SNP report, and the runtime claims its report_data binds."""

    snp_report: bytes = dataclasses.field(repr=False)
    claims_json: bytes = dataclasses.field(repr=False)
    hash_name: str

    @classmethod
    def parse(cls, data: bytes) -> HclReport:
        raw = bytes(data)
        if not _RUNTIME_AT + _RUNTIME_HEADER.size <= len(raw) <= _MAX_HCL:
            raise Rejected(f"an HCL report is {_RUNTIME_AT + 20} to {_MAX_HCL} bytes")
        if raw[:4] != _HCL_MAGIC:
            raise Rejected("HCL report: no HCLA signature")
        size, version, report_type, hash_type, var_size = _RUNTIME_HEADER.unpack_from(
            raw, _RUNTIME_AT
        )
        if version != _RUNTIME_VERSION:
            raise Rejected(f"HCL report: runtime data version {version} (only 1)")
        if report_type == _REPORT_TYPE_TDX:
            raise Rejected("HCL report: a TDX report (only SEV-SNP is verified here)")
        if report_type != _REPORT_TYPE_SNP:
            raise Rejected(f"HCL report: report type {report_type}")
        hash_name = _HASH_TYPES.get(hash_type)
        if hash_name is None:
            raise Rejected(f"HCL report: hash type {hash_type}")
        start = _RUNTIME_AT + _RUNTIME_HEADER.size
        if size != _RUNTIME_HEADER.size + var_size or not 0 < var_size <= _MAX_CLAIMS:
            raise Rejected("HCL report: inconsistent runtime data sizes")
        if start + var_size > len(raw):
            raise Rejected("HCL report: the runtime claims run past its end")
        return cls(
            snp_report=raw[_SNP_AT : _SNP_AT + SNP_REPORT_BYTES],
            claims_json=raw[start : start + var_size],
            hash_name=hash_name,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AzureCvmAttestation:
    """A verified Azure CVM: its SNP report, runtime claims, and the quote its vTPM signed."""

    snp: SnpAttestation
    claims: Mapping[str, Any]
    quote: TpmQuote
    #: The PCR values the quote vouches for, by bank and index.
    pcrs: Mapping[str, Mapping[int, bytes]]

    def summary(self) -> dict[str, Any]:
        """The JSON form ``sealserve attest verify-azure-cvm --json`` prints."""
        vm = self.claims.get("vm-configuration")
        return {
            "verified": True,
            "snp": self.snp.summary(),
            "vm_configuration": vm if isinstance(vm, dict) else None,
            "nonce": self.quote.extra_data.hex(),
            "pcrs": {
                bank: {str(i): v.hex() for i, v in sorted(values.items())}
                for bank, values in self.pcrs.items()
            },
        }


def check_azure_cvm(
    hcl_report: bytes,
    *,
    attest: bytes,
    signature: TpmSignature,
    pcrs: Mapping[str, Mapping[int, bytes]],
    nonce: bytes,
    now: int,
    anchors: SnpAnchors | None = None,
    certificates: Iterable[bytes] = (),
) -> AzureCvmAttestation:
    """Walk the whole chain; ``Rejected`` with the reason at the first link that fails.

    ``certificates`` come with the evidence (the VCEK at least); ``anchors`` holds the pins
    and the operator's cached ASK and ARK.  ``nonce`` is the quote's expected extraData.
    """
    hcl = HclReport.parse(hcl_report)
    snp = check_snp(hcl.snp_report, now=now, anchors=anchors, certificates=certificates)
    digest = hashlib.new(hcl.hash_name, hcl.claims_json).digest()
    expected = digest.ljust(64, b"\x00")
    if not hmac.compare_digest(snp.report.report_data, expected):
        raise Rejected("the SNP report's report_data is not the hash of the runtime claims")
    claims = _parse_claims(hcl.claims_json)
    ak = _attestation_key(claims)
    quote, quoted = check_quote(attest, signature, ak_public=ak, pcrs=pcrs, nonce=nonce)
    return AzureCvmAttestation(snp=snp, claims=claims, quote=quote, pcrs=quoted)


def _parse_claims(data: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("the runtime claims are not JSON") from None
    if not isinstance(claims, dict):
        raise Rejected("the runtime claims are not a JSON object")
    return claims


def _attestation_key(claims: Mapping[str, Any]) -> rsa.RSAPublicKey:
    keys = claims.get("keys")
    if not isinstance(keys, list):
        raise Rejected("the runtime claims hold no keys")
    found = [k for k in keys if isinstance(k, dict) and k.get("kid") == _AK_KID]
    if len(found) != 1:
        raise Rejected(f"the runtime claims hold {len(found)} keys named {_AK_KID}")
    jwk = found[0]
    if jwk.get("kty") != "RSA" or not isinstance(jwk.get("n"), str):
        raise Rejected(f"{_AK_KID} is not an RSA key")
    if not isinstance(jwk.get("e"), str):
        raise Rejected(f"{_AK_KID} is not an RSA key")
    n, e = _b64url_int(jwk["n"]), _b64url_int(jwk["e"])
    if n.bit_length() < 2048 or e < 3 or e % 2 == 0:
        raise Rejected(f"{_AK_KID} is not a usable RSA key")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise Rejected(f"{_AK_KID} is not a usable RSA key") from None


def _b64url_int(text: str) -> int:
    if len(text) > 1024:
        raise Rejected("a JWK number is too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise Rejected("a JWK number is not base64url") from None
    return int.from_bytes(raw, "big")


def verify_azure_cvm(
    hcl_report: bytes,
    *,
    attest: bytes,
    signature: TpmSignature,
    pcrs: Mapping[str, Mapping[int, bytes]],
    nonce: bytes,
    now: int,
    anchors: SnpAnchors | None = None,
    certificates: Iterable[bytes] = (),
) -> AzureCvmAttestation:
    """Verify an Azure CVM's evidence (see :func:`check_azure_cvm`); every failure is the fixed
    :class:`~sealserve.errors.AttestationError`, the reason logged at DEBUG."""
    try:
        return check_azure_cvm(
            hcl_report,
            attest=attest,
            signature=signature,
            pcrs=pcrs,
            nonce=nonce,
            now=now,
            anchors=anchors,
            certificates=certificates,
        )
    except Rejected as exc:
        _log.event("azure_cvm.rejected", level=logging.DEBUG, reason=str(exc))
        raise AttestationError() from None
