"""X.509 helpers for the hardware verifiers: loading hostile bytes, windows, chains, CRLs.

Every function here raises :class:`Rejected` with a short reason; the verifiers that call them
log the reason at DEBUG and raise the fixed :class:`~sealserve.errors.AttestationError`.
Nothing here reaches the network: certificates and CRLs come from the evidence, the operator's
cache, or the caller.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import itertools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

__all__ = [
    "MAX_CERT_BYTES",
    "Rejected",
    "check_crls",
    "check_window",
    "crl_signed_by",
    "load_certificate",
    "load_certificates",
    "load_crl",
    "public_key",
    "remember_verified",
    "serial_number",
    "spki_sha256",
    "verify_chain",
    "verified_before",
    "verify_pss_sha384",
]

MAX_CERT_BYTES: Final = 16 * 1024
_MAX_CRL_BYTES: Final = 1024 * 1024
_MAX_CHAIN: Final = 8
# warnings.catch_warnings() swaps process-wide state: two threads interleaving their enter and
# exit could leave a filter behind.  Every use here takes this lock.
_WARNINGS_LOCK = threading.Lock()


class Rejected(Exception):
    """Why evidence did not verify (for operator tools and the DEBUG log; never for callers
    across the security boundary, who get the fixed ``AttestationError``)."""


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from DER or PEM bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"certificate must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    if not 0 < len(raw) <= MAX_CERT_BYTES:
        raise Rejected(f"a certificate is 1 to {MAX_CERT_BYTES} bytes, got {len(raw)}")
    return _parse_certificate(raw)


@functools.lru_cache(maxsize=256)
def _parse_certificate(raw: bytes) -> x509.Certificate:
    # Certificates are immutable; the same VCEK or AK certificate arrives with every report of
    # its machine, so parsing it once saves most of the cost (bounded: 256 entries).
    #
    # AMD's VCEKs and VLEKs carry serial number 0, which RFC 5280 forbids and `cryptography`
    # parses with a CryptographyDeprecationWarning (an error where warnings are errors).  The
    # serial plays no part in trusting them (the chain, the signature and the TCB extensions
    # do), so that one warning is expected here and silenced; any other warning still
    # surfaces.  The serial is read again only through serial_number(), under the same filter.
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=CryptographyDeprecationWarning, message=".*serial number.*"
        )
        try:
            if raw.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(raw)
            else:
                cert = x509.load_der_x509_certificate(raw)
            # `cryptography` parses some fields only when they are read: read every one the
            # verifiers use now, so that a malformed one is this refusal and not a ValueError
            # deep inside a verification.
            _ = (
                cert.subject,
                cert.issuer,
                cert.extensions,
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
                cert.signature,
                cert.tbs_certificate_bytes,
                cert.serial_number,
                cert.public_key(),
            )
        except Exception as exc:  # every parser error of hostile bytes is one refusal:
            # ValueError mostly, but also InvalidVersion, DuplicateExtension and others.
            raise Rejected("certificate does not parse") from exc
    _check_algorithms_agree(cert)
    return cert


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end) of the DER element at ``at``; ``Rejected`` if malformed."""
    if at + 2 > len(data):
        raise Rejected("certificate: truncated DER")
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 3 or at + count > len(data):
            raise Rejected("certificate: bad DER length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    if at + length > len(data):
        raise Rejected("certificate: truncated DER")
    return tag, at, at + length


def _check_algorithms_agree(cert: x509.Certificate) -> None:
    """The unsigned signatureAlgorithm equals the signed one in the TBS (RFC 5280 4.1.1.2).

    Verifiers check the TBS and the signature; without this, the outer algorithm field could
    be altered (by a host relaying the certificate) and the certificate still verify.
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    _, body, end = _tlv(der, 0)
    _, tbs_body, tbs_end = _tlv(der, body)
    _, _, outer_end = _tlv(der, tbs_end)
    outer = der[tbs_end:outer_end]
    tag, value, value_end = _tlv(der, outer_end)
    if tag != 0x03 or value >= value_end or der[value] != 0 or value_end != end:
        raise Rejected("certificate: its signature is not a whole-byte BIT STRING")
    at = tbs_body
    tag, _, field_end = _tlv(der, at)
    if tag == 0xA0:  # [0] version
        at = field_end
    _, _, serial_end = _tlv(der, at)  # serialNumber
    _, _, inner_end = _tlv(der, serial_end)  # signature AlgorithmIdentifier
    if der[serial_end:inner_end] != outer or end != len(der):
        raise Rejected("certificate: its signature algorithm differs from the signed one")


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in ``data``: a PEM bundle, or one DER certificate."""
    raw = bytes(data)
    if raw.lstrip().startswith(b"-----BEGIN"):
        blocks = [b for b in raw.split(b"-----END CERTIFICATE-----") if b"-----BEGIN" in b]
        if not 0 < len(blocks) <= _MAX_CHAIN:
            raise Rejected(f"a bundle holds 1 to {_MAX_CHAIN} certificates, got {len(blocks)}")
        return [
            load_certificate(block[block.index(b"-----BEGIN") :] + b"-----END CERTIFICATE-----\n")
            for block in blocks
        ]
    return [load_certificate(raw)]


def serial_number(cert: x509.Certificate) -> int:
    """The serial number, read under the same deliberate filter as load_certificate."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=CryptographyDeprecationWarning, message=".*serial number.*"
        )
        return cert.serial_number


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes."""
    raw = bytes(data)
    if not 0 < len(raw) <= _MAX_CRL_BYTES:
        raise Rejected(f"a CRL is 1 to {_MAX_CRL_BYTES} bytes, got {len(raw)}")
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(raw)
        else:
            crl = x509.load_der_x509_crl(raw)
        # Read every field (and entry) now: see _parse_certificate.
        _ = (
            crl.issuer,
            crl.last_update_utc,
            crl.next_update_utc,
            crl.signature,
            crl.tbs_certlist_bytes,
            [entry.serial_number for entry in crl],
        )
    except Exception as exc:  # see _parse_certificate
        raise Rejected("CRL does not parse") from exc
    return crl


def public_key(cert: x509.Certificate) -> Any:
    """The certificate's public key; ``Rejected`` for a key `cryptography` cannot load (an
    unknown curve or algorithm, a malformed key), which hostile certificates may carry."""
    try:
        return cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Rejected("a certificate's public key does not load") from None


def spki_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's SubjectPublicKeyInfo (what pins name)."""
    spki = public_key(cert).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def check_window(cert: x509.Certificate, now: int, what: str) -> None:
    """The certificate is valid at Unix time ``now``."""
    at = datetime.datetime.fromtimestamp(now, datetime.UTC)
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise Rejected(f"{what} is not valid at {now}")


def verify_pss_sha384(issuer: x509.Certificate, cert: x509.Certificate, what: str) -> None:
    """``cert`` names ``issuer`` and carries its RSA-PSS SHA-384 (salt 48) signature.

    AMD signs its ASK, ASVK, VCEKs and VLEKs exactly so; nothing weaker is accepted, whatever
    algorithm the certificate itself names.
    """
    if cert.issuer != issuer.subject:
        raise Rejected(f"{what} is not issued by {issuer.subject.rfc4514_string()}")
    if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        raise Rejected(f"{what} is not signed with RSA-PSS")
    memo = _memo_key("pss-sha384", issuer, cert)
    if verified_before(memo):
        return
    key = public_key(issuer)
    if not isinstance(key, rsa.RSAPublicKey):
        raise Rejected(f"the issuer of {what} has no RSA key")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, pss, hashes.SHA384())
    except InvalidSignature:
        raise Rejected(f"the signature of {what} does not verify") from None
    remember_verified(memo)


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Iterable[x509.Certificate],
    *,
    now: int,
    what: str,
) -> x509.Certificate:
    """Verify ``chain`` (leaf first, intermediates after) up to one of ``roots`` at ``now``.

    Each link: the issuer's name and signature (RSA PKCS#1 v1.5, RSA-PSS or ECDSA, as the
    certificate names it), both windows, and a CA basic constraint on every issuer.  Returns
    the root it ended at.
    """
    if not 0 < len(chain) <= _MAX_CHAIN:
        raise Rejected(f"{what}: a chain holds 1 to {_MAX_CHAIN} certificates")
    root_list = list(roots)
    if not root_list:
        raise Rejected(f"{what}: no trusted root")
    for cert in chain:
        check_window(cert, now, what)
    for child, parent in itertools.pairwise(chain):
        _check_issued(child, parent, what)
    top = chain[-1]
    for root in root_list:
        if top == root:
            return root
    # Every root of the right name is tried: two CAs may share one.
    for root in root_list:
        if top.issuer == root.subject:
            try:
                check_window(root, now, f"{what}'s root")
                _check_issued(top, root, what)
            except Rejected:
                continue
            return root
    raise Rejected(f"{what} does not chain to a trusted root")


def check_crls(
    crls: Sequence[x509.CertificateRevocationList],
    issuer: x509.Certificate,
    certs: Sequence[x509.Certificate],
    *,
    now: int,
) -> None:
    """Every CRL ``issuer`` signed is current at ``now`` and revokes none of ``certs``.

    CRLs of other issuers are ignored (they speak of other certificates); a CRL that names
    ``issuer`` but does not carry its valid signature is refused, as is one not current.
    """
    at = datetime.datetime.fromtimestamp(now, datetime.UTC)
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        if not crl_signed_by(crl, issuer):
            raise Rejected("a CRL does not carry its issuer's signature")
        next_update = crl.next_update_utc
        if crl.last_update_utc > at or (next_update is not None and next_update < at):
            raise Rejected("a CRL is not current")
        for cert in certs:
            revoked = crl.get_revoked_certificate_by_serial_number(serial_number(cert))
            if cert.issuer == issuer.subject and revoked is not None:
                raise Rejected("a certificate of the chain is revoked")


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = public_key(issuer)
    params = crl.signature_algorithm_parameters
    digest = crl.signature_hash_algorithm
    if digest is None:
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.PSS | padding.PKCS1v15):
            key.verify(crl.signature, crl.tbs_certlist_bytes, params, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(crl.signature, crl.tbs_certlist_bytes, ec.ECDSA(digest))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _check_issued(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    try:
        constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise Rejected(f"an issuer in {what}'s chain is not a CA") from None
    except ValueError as exc:
        raise Rejected(f"an issuer in {what}'s chain has malformed extensions") from exc
    if not constraints.ca:
        raise Rejected(f"an issuer in {what}'s chain is not a CA")
    memo = _memo_key("as-named", parent, child)
    if verified_before(memo):
        return
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise Rejected(f"a signature in {what}'s chain does not verify") from None
    remember_verified(memo)


# Signatures that verified, by (how, the issuer's certificate, the certificate): a signature
# check is a pure function of those bytes, and the same chains arrive with every report of a
# machine, so each is checked once (bounded; only successes are kept).  Names, windows and
# CRLs are checked on every call all the same.
_MEMO: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()
#: A memo key: (how it was checked, who signed, what was signed with its signature).
MemoKey = tuple[str, bytes, bytes]
_MEMO_LOCK = threading.Lock()
_MEMO_SIZE: Final = 1024


def _memo_key(
    how: str, issuer: x509.Certificate, cert: x509.Certificate
) -> tuple[str, bytes, bytes]:
    return (
        how,
        issuer.public_bytes(serialization.Encoding.DER),
        cert.public_bytes(serialization.Encoding.DER),
    )


def verified_before(key: MemoKey) -> bool:
    """Whether the signature check named by ``key`` succeeded before (see ``_MEMO``)."""
    with _MEMO_LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return True
    return False


def remember_verified(key: MemoKey) -> None:
    """Remember that the signature check named by ``key`` succeeded."""
    with _MEMO_LOCK:
        _MEMO[key] = None
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
