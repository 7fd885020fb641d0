"""The operator's cache of AMD certificates and CRLs, filled from files fetched from AMD's KDS.

A verifier never reaches the network.  The operator downloads from AMD's Key Distribution
Service, on a machine that may (``https://kdsintf.amd.com``):

* ``/vcek/v1/{Milan,Genoa,Turin}/cert_chain`` and ``/vlek/v1/{product}/cert_chain`` (ASK or
  ASVK, and ARK, PEM);
* ``/vcek/v1/{product}/crl`` and ``/vlek/v1/{product}/crl`` (DER CRLs signed by the ARK);
* ``/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` (a chip's VCEK, DER);

and ``sealserve attest snp-cache fill FROM_DIR --cache DIR`` copies into the cache every one
of those files that chains to a pinned ARK (anything else is refused), under names that say
what they are::

    <cache>/<product>/ark.der, ask.der, asvk.der
    <cache>/<product>/crl-<sha256 prefix>.der
    <cache>/<product>/vcek/<hwid hex>-<tcb hex>.der
    <cache>/<product>/vlek/<tcb hex>-<sha256 prefix>.der

:func:`read_cache` reads it back for :meth:`~sealserve.attest.SnpAnchors.from_cache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sealserve.attest._amd import (
    ARK_SPKI_SHA256,
    PRODUCTS,
    AmdCert,
    classify,
    leaf_hwid,
    leaf_tcb,
    pinned,
)
from sealserve.attest._certs import (
    Rejected,
    crl_signed_by,
    load_certificates,
    load_crl,
    verify_pss_sha384,
)

__all__ = ["FillResult", "fill_cache", "read_cache"]

_MAX_FILE_BYTES: Final = 1024 * 1024
_MAX_FILES: Final = 4096
_ISSUER_ROLE: Final = {"ask": "ark", "asvk": "ark", "vcek": "ask", "vlek": "asvk"}


@dataclasses.dataclass(frozen=True)
class FillResult:
    """What :func:`fill_cache` stored (cache-relative paths) and what it refused, and why."""

    stored: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]


def read_cache(cache_dir: object) -> tuple[list[bytes], list[bytes]]:
    """Every certificate and CRL (DER) in ``cache_dir``; a missing directory holds none."""
    root = Path(str(cache_dir))
    certs: list[bytes] = []
    crls: list[bytes] = []
    for product in PRODUCTS:
        folder = root / product
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.der"))[:_MAX_FILES]:
            data = path.read_bytes()
            (crls if path.name.startswith("crl-") else certs).append(data)
    return certs, crls


def fill_cache(
    from_dir: Path, cache_dir: Path, *, ark_pins: Mapping[str, str] = ARK_SPKI_SHA256
) -> FillResult:
    """Copy the AMD certificates and CRLs in ``from_dir`` that chain to a pinned ARK.

    Signatures are checked (RSA-PSS SHA-384 up to the pinned ARK, found among the new files
    or already in the cache); validity windows are not, since verification checks them at
    its own ``now``.  Files that are neither certificates nor CRLs are refused by name.
    """
    files = sorted(p for p in Path(from_dir).rglob("*") if p.is_file())[:_MAX_FILES]
    refused: list[tuple[str, str]] = []
    found: list[tuple[str, AmdCert]] = []
    crls: list[tuple[str, x509.CertificateRevocationList, bytes]] = []
    for path in files:
        try:
            data = path.read_bytes() if path.stat().st_size <= _MAX_FILE_BYTES else b""
        except OSError as exc:
            refused.append((path.name, f"cannot read: {exc.strerror}"))
            continue
        try:
            certs = load_certificates(data) if data else []
        except Rejected:
            certs = []
        if certs:
            for cert in certs:
                amd = classify(cert)
                if amd is None:
                    refused.append((path.name, "not a certificate of AMD's SEV-SNP hierarchy"))
                else:
                    found.append((path.name, amd))
            continue
        try:
            crl = load_crl(data) if data else None
        except Rejected:
            crl = None
        if crl is None:
            refused.append((path.name, "neither a certificate nor a CRL"))
        else:
            crls.append((path.name, crl, crl.public_bytes(serialization.Encoding.DER)))

    existing, _ = read_cache(cache_dir)
    pool = found + [("(cache)", a) for a in _classified(existing)]
    stored: list[str] = []
    for name, amd in found:
        try:
            _check_up_to_ark(amd, [a for _, a in pool], ark_pins)
        except Rejected as exc:
            refused.append((name, str(exc)))
            continue
        try:
            stored.append(_store(Path(cache_dir), amd))
        except Rejected as exc:
            refused.append((name, str(exc)))
    arks = [a for _, a in pool if pinned(a, ark_pins)]
    for name, crl, der in crls:
        issuer = next((a for a in arks if a.cert.subject == crl.issuer), None)
        if issuer is None:
            refused.append((name, "a CRL not issued by a pinned ARK"))
            continue
        try:
            _check_crl_signature(crl, issuer)
        except Rejected as exc:
            refused.append((name, str(exc)))
            continue
        digest = hashlib.sha256(der).hexdigest()[:16]
        stored.append(_write(Path(cache_dir), f"{issuer.product}/crl-{digest}.der", der))
    return FillResult(stored=tuple(dict.fromkeys(stored)), refused=tuple(refused))


def _classified(blobs: list[bytes]) -> list[AmdCert]:
    out = []
    for blob in blobs:
        try:
            for cert in load_certificates(blob):
                amd = classify(cert)
                if amd is not None:
                    out.append(amd)
        except Rejected:
            continue
    return out


def _check_up_to_ark(amd: AmdCert, pool: list[AmdCert], pins: Mapping[str, str]) -> None:
    current = amd
    for _ in range(3):
        if current.role == "ark":
            if not pinned(current, pins):
                raise Rejected(f"an ARK for {current.product} that is not the pinned one")
            verify_pss_sha384(current.cert, current.cert, "the ARK")
            return
        wanted = _ISSUER_ROLE[current.role]
        issuer = next(
            (
                a
                for a in pool
                if a.role == wanted
                and a.product == current.product
                and a.cert.subject == current.cert.issuer
            ),
            None,
        )
        if issuer is None:
            raise Rejected(f"its issuer ({wanted.upper()}-{current.product}) is not at hand")
        verify_pss_sha384(issuer.cert, current.cert, f"the {current.role.upper()}")
        current = issuer
    raise Rejected("the chain is too long")  # pragma: no cover - three steps reach the ARK


def _check_crl_signature(crl: x509.CertificateRevocationList, ark: AmdCert) -> None:
    if not crl_signed_by(crl, ark.cert):
        raise Rejected("the CRL does not carry its ARK's signature")


def _store(cache: Path, amd: AmdCert) -> str:
    der = amd.cert.public_bytes(serialization.Encoding.DER)
    if amd.role in ("ark", "ask", "asvk"):
        return _write(cache, f"{amd.product}/{amd.role}.der", der)
    tcb = leaf_tcb(amd).raw.hex()
    if amd.role == "vcek":
        hwid = leaf_hwid(amd)
        if hwid is None:
            raise Rejected("a VCEK without a hardware id")
        return _write(cache, f"{amd.product}/vcek/{hwid.hex()}-{tcb}.der", der)
    digest = hashlib.sha256(der).hexdigest()[:16]
    return _write(cache, f"{amd.product}/vlek/{tcb}-{digest}.der", der)


def _write(cache: Path, relative: str, data: bytes) -> str:
    target = cache / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return relative
