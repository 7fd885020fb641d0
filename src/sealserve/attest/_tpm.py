"""TPM 2.0 quotes, verified offline: the TPMS_ATTEST, the attestation key's signature, the PCRs.

A quote is the TPM's signature, with an attestation key (AK), over a ``TPMS_ATTEST`` structure
(TPM 2.0 Library, Part 2): ``magic`` (``TPM_GENERATED_VALUE``: the TPM made it), ``type``
(``TPM_ST_ATTEST_QUOTE``), the signer's qualified name, ``extraData`` (the verifier's nonce),
the clock, the firmware version, and the selected PCRs with the digest of their values.
:func:`check_quote` checks all of it: the structure, the signature (RSASSA-PKCS1-v1_5,
RSASSA-PSS or ECDSA, with SHA-256/384/512), the nonce (constant time), and the PCR digest
recomputed from the PCR values the evidence claims; only the PCRs the quote selected are
returned.  Whether the AK itself is to be trusted is the caller's question: a certificate chain
(:func:`check_ak_chain`) or a hardware report that contains it (Azure's HCL report).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from sealserve._log import get_logger
from sealserve.attest._certs import (
    Rejected,
    load_certificate,
    load_certificates,
    public_key,
    spki_sha256,
    verify_chain,
)
from sealserve.errors import AttestationError

__all__ = [
    "BANKS",
    "TpmAnchors",
    "TpmAttestation",
    "TpmQuote",
    "TpmSignature",
    "check_ak_chain",
    "check_quote",
    "check_tpm",
    "verify_tpm",
    "pcr_digest",
    "tpm_qualifying_data",
]

TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_QUOTE: Final = 0x8018
ALG_RSASSA: Final = 0x0014
ALG_RSAPSS: Final = 0x0016
ALG_ECDSA: Final = 0x0018
ALG_SHA1: Final = 0x0004
#: PCR banks (and signature hashes) by TPM_ALG_ID; SHA-1 is parsed for names only.
BANKS: Final[Mapping[int, str]] = {0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
_ALG_BY_NAME: Final = {name: alg for alg, name in BANKS.items()}
_DIGEST_SIZE: Final = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_SIG_NAMES: Final = {ALG_RSASSA: "rsassa", ALG_RSAPSS: "rsapss", ALG_ECDSA: "ecdsa"}
_SIG_ALG_BY_NAME: Final = {name: alg for alg, name in _SIG_NAMES.items()}
PCR_COUNT: Final = 24
_MAX_ATTEST: Final = 1024
_MAX_SIGNATURE: Final = 1024

_log = get_logger(__name__)


def tpm_qualifying_data(report_data: bytes) -> bytes:
    """The ``extraData`` a quote carries for sealserve's 64-byte ``report_data``: its SHA-256.

    32 bytes fit every TPM (a TPM2B_DATA holds at most one digest of the TPM's largest bank).
    """
    if len(report_data) != 64:
        raise ValueError(f"report_data must be 64 bytes, got {len(report_data)}")
    return hashlib.sha256(report_data).digest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpmQuote:
    """A parsed TPMS_ATTEST of a quote."""

    raw: bytes = dataclasses.field(repr=False)
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    #: (bank, PCR indices) in the order the quote lists them.
    selection: tuple[tuple[str, tuple[int, ...]], ...]
    pcr_digest: bytes

    @classmethod
    def parse(cls, data: bytes) -> TpmQuote:
        raw = bytes(data)
        if not 0 < len(raw) <= _MAX_ATTEST:
            raise Rejected(f"a TPMS_ATTEST is 1 to {_MAX_ATTEST} bytes, got {len(raw)}")
        cur = _Reader(raw)
        if cur.u32() != TPM_GENERATED_VALUE:
            raise Rejected("TPMS_ATTEST: magic is not TPM_GENERATED_VALUE")
        if cur.u16() != TPM_ST_ATTEST_QUOTE:
            raise Rejected("TPMS_ATTEST: type is not TPM_ST_ATTEST_QUOTE")
        signer = cur.tpm2b()
        _check_name(signer)
        extra = cur.tpm2b()
        if len(extra) > 64:
            raise Rejected("TPMS_ATTEST: extraData is longer than a digest")
        clock, reset, restart, safe = cur.u64(), cur.u32(), cur.u32(), cur.u8()
        if safe > 1:
            raise Rejected("TPMS_ATTEST: clockInfo.safe is not a TPMI_YES_NO")
        firmware = cur.u64()
        selection = _read_selection(cur)
        digest = cur.tpm2b()
        if len(digest) not in (32, 48, 64):
            raise Rejected("TPMS_QUOTE_INFO: pcrDigest is not a SHA-2 digest")
        cur.end()
        return cls(
            raw=raw,
            qualified_signer=signer,
            extra_data=extra,
            clock=clock,
            reset_count=reset,
            restart_count=restart,
            safe=bool(safe),
            firmware_version=firmware,
            selection=selection,
            pcr_digest=digest,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpmSignature:
    """A TPMT_SIGNATURE: the scheme, its hash, and the signature (DER for ECDSA)."""

    scheme: str  # "rsassa", "rsapss" or "ecdsa"
    hash: str  # "sha256", "sha384" or "sha512"
    signature: bytes

    def __post_init__(self) -> None:
        if self.scheme not in _SIG_ALG_BY_NAME:
            raise ValueError(
                f"scheme must be one of {sorted(_SIG_ALG_BY_NAME)}, got {self.scheme!r}"
            )
        if self.hash not in _HASHES:
            raise ValueError(f"hash must be one of {sorted(_HASHES)}, got {self.hash!r}")

    @classmethod
    def parse(cls, data: bytes) -> TpmSignature:
        raw = bytes(data)
        if not 0 < len(raw) <= _MAX_SIGNATURE:
            raise Rejected(f"a TPMT_SIGNATURE is 1 to {_MAX_SIGNATURE} bytes, got {len(raw)}")
        cur = _Reader(raw)
        scheme = _SIG_NAMES.get(cur.u16())
        if scheme is None:
            raise Rejected("TPMT_SIGNATURE: not RSASSA, RSAPSS or ECDSA")
        hash_name = BANKS.get(cur.u16())
        if hash_name is None:
            raise Rejected("TPMT_SIGNATURE: the hash is not SHA-256, SHA-384 or SHA-512")
        if scheme == "ecdsa":
            r, s = cur.tpm2b(), cur.tpm2b()
            if not r or not s:
                raise Rejected("TPMT_SIGNATURE: empty ECDSA r or s")
            sig = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        else:
            sig = cur.tpm2b()
        cur.end()
        return cls(scheme=scheme, hash=hash_name, signature=sig)

    def to_bytes(self) -> bytes:
        """The TPMT_SIGNATURE form (what :meth:`parse` reads)."""
        head = struct.pack(">HH", _SIG_ALG_BY_NAME[self.scheme], _ALG_BY_NAME[self.hash])
        if self.scheme == "ecdsa":
            r, s = decode_dss_signature(self.signature)
            size = (max(r.bit_length(), s.bit_length()) + 7) // 8
            parts = [r.to_bytes(size, "big"), s.to_bytes(size, "big")]
        else:
            parts = [self.signature]
        return head + b"".join(struct.pack(">H", len(p)) + p for p in parts)

    def verify(self, key: Any, message: bytes) -> None:
        algorithm = _HASHES[self.hash]()
        try:
            if self.scheme == "ecdsa":
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise Rejected("an ECDSA signature, but the AK is not an EC key")
                key.verify(self.signature, message, ec.ECDSA(algorithm))
                return
            if not isinstance(key, rsa.RSAPublicKey):
                raise Rejected("an RSA signature, but the AK is not an RSA key")
            if key.key_size < 2048:
                raise Rejected("the AK is an RSA key shorter than 2048 bits")
            if self.scheme == "rsassa":
                key.verify(self.signature, message, padding.PKCS1v15(), algorithm)
            else:
                # TPMs sign RSASSA-PSS with a salt as long as the digest (the TPM 2.0
                # library's PssEncode, whenever the key is large enough); accept that only.
                pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
                key.verify(self.signature, message, pss, algorithm)
        except InvalidSignature:
            raise Rejected("the quote's signature does not verify with the AK") from None


def pcr_digest(
    selection: Sequence[tuple[str, Sequence[int]]],
    pcrs: Mapping[str, Mapping[int, bytes]],
    hash_name: str,
) -> bytes:
    """The digest (with ``hash_name``) of the selected PCR values in quote order."""
    h = hashlib.new(hash_name)
    for bank, indices in selection:
        values = pcrs.get(bank, {})
        for index in indices:
            value = values.get(index)
            if value is None:
                raise Rejected(f"the evidence claims no value for quoted PCR {bank}:{index}")
            if len(value) != _DIGEST_SIZE[bank]:
                raise Rejected(f"PCR {bank}:{index} is not a {bank} digest")
            h.update(value)
    return h.digest()


def check_quote(
    attest: bytes,
    signature: TpmSignature,
    *,
    ak_public: Any,
    pcrs: Mapping[str, Mapping[int, bytes]],
    nonce: bytes,
) -> tuple[TpmQuote, dict[str, dict[int, bytes]]]:
    """The parsed quote and the PCR values it vouches for, if everything checks.

    The signature must verify with ``ak_public`` over ``attest``; its ``extraData`` must be
    ``nonce``; the PCR digest must be that of ``pcrs``' values for the selected PCRs, computed
    with the signature's hash (as the TPM computes it).  Values of PCRs the quote did not select
    are ignored.
    """
    quote = TpmQuote.parse(attest)
    signature.verify(ak_public, quote.raw)
    if not hmac.compare_digest(quote.extra_data, bytes(nonce)):
        raise Rejected("the quote's extraData is not the nonce")
    expected = pcr_digest(quote.selection, pcrs, signature.hash)
    if not hmac.compare_digest(expected, quote.pcr_digest):
        raise Rejected("the quote's PCR digest is not that of the claimed PCR values")
    quoted = {bank: {i: pcrs[bank][i] for i in indices} for bank, indices in quote.selection}
    return quote, quoted


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class TpmAnchors:
    """The roots an AK certificate must chain to (a cloud's AK CA; swtpm's local CA in tests)."""

    roots: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", tuple(bytes(r) for r in self.roots))
        try:
            parsed = tuple(c for r in self.roots for c in load_certificates(r))
        except Rejected as exc:
            raise ValueError(f"TpmAnchors 'roots' holds what is not a certificate: {exc}") from None
        object.__setattr__(self, "_parsed", parsed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TpmAnchors) and self.roots == other.roots

    def __hash__(self) -> int:
        return hash(self.roots)

    @property
    def parsed_roots(self) -> tuple[Any, ...]:
        roots: tuple[Any, ...] = object.__getattribute__(self, "_parsed")
        return roots


def check_ak_chain(chain: Sequence[bytes], anchors: TpmAnchors, *, now: int) -> Any:
    """The AK's public key, from its certificate (``chain[0]``) verified up to a root."""
    certs = [load_certificate(c) for c in chain]
    verify_chain(certs, anchors.parsed_roots, now=now, what="the AK certificate")
    return public_key(certs[0])


class _Reader:
    """Big-endian reads over hostile bytes; every overrun is ``Rejected``."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise Rejected("TPM structure: truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self._pos != len(self._data):
            raise Rejected("TPM structure: trailing bytes")


def _check_name(name: bytes) -> None:
    """A TPM2B_NAME's content: empty, a handle (4 bytes), or nameAlg and its digest."""
    if len(name) in (0, 4):
        return
    alg = int.from_bytes(name[:2], "big") if len(name) >= 2 else -1
    size = _DIGEST_SIZE.get(BANKS.get(alg, "sha1" if alg == ALG_SHA1 else ""), -1)
    if len(name) != 2 + size:
        raise Rejected("TPMS_ATTEST: qualifiedSigner is not a TPM name")


def _read_selection(cur: _Reader) -> tuple[tuple[str, tuple[int, ...]], ...]:
    count = cur.u32()
    if count > len(BANKS):
        raise Rejected("TPML_PCR_SELECTION: more banks than exist")
    out: list[tuple[str, tuple[int, ...]]] = []
    seen: set[str] = set()
    for _ in range(count):
        bank = BANKS.get(cur.u16())
        if bank is None or bank in seen:
            raise Rejected("TPML_PCR_SELECTION: a bank that is not SHA-2, or twice")
        seen.add(bank)
        size = cur.u8()
        if not 3 <= size <= 4:
            raise Rejected("TPMS_PCR_SELECTION: sizeofSelect is not 3 or 4")
        bits = int.from_bytes(cur.take(size), "little")
        indices = tuple(i for i in range(size * 8) if bits >> i & 1)
        if any(i >= PCR_COUNT for i in indices):
            raise Rejected("TPMS_PCR_SELECTION: a PCR above 23")
        out.append((bank, indices))
    if not any(indices for _, indices in out):
        raise Rejected("TPML_PCR_SELECTION: no PCR selected")
    return tuple(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpmAttestation:
    """A verified TPM quote: the quote, the PCR values it vouches for, and the AK's chain."""

    quote: TpmQuote
    pcrs: Mapping[str, Mapping[int, bytes]]
    #: Hex SHA-256 of the AK's SubjectPublicKeyInfo.
    ak_spki_sha256: str

    def summary(self) -> dict[str, Any]:
        """The JSON form ``sealserve attest verify-tpm --json`` prints."""
        q = self.quote
        return {
            "verified": True,
            "nonce": q.extra_data.hex(),
            "pcr_digest": q.pcr_digest.hex(),
            "pcrs": {
                bank: {str(i): v.hex() for i, v in sorted(values.items())}
                for bank, values in self.pcrs.items()
            },
            "clock": q.clock,
            "reset_count": q.reset_count,
            "restart_count": q.restart_count,
            "safe": q.safe,
            "firmware_version": f"{q.firmware_version:#018x}",
            "qualified_signer": q.qualified_signer.hex(),
            "ak_spki_sha256": self.ak_spki_sha256,
        }


def check_tpm(
    attest: bytes,
    signature: bytes | TpmSignature,
    *,
    pcrs: Mapping[str, Mapping[int, bytes]],
    nonce: bytes,
    now: int,
    anchors: TpmAnchors,
    ak_chain: Sequence[bytes],
) -> TpmAttestation:
    """A quote whose AK certificate (``ak_chain[0]``, then intermediates) chains to one of
    ``anchors``' roots at ``now``; ``Rejected`` with the reason otherwise."""
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise TypeError(f"now must be a non-negative int (Unix seconds), got {now!r}")
    if not ak_chain:
        raise Rejected("no AK certificate")
    sig = signature if isinstance(signature, TpmSignature) else TpmSignature.parse(signature)
    ak = check_ak_chain(ak_chain, anchors, now=now)
    quote, quoted = check_quote(attest, sig, ak_public=ak, pcrs=pcrs, nonce=nonce)
    return TpmAttestation(
        quote=quote, pcrs=quoted, ak_spki_sha256=spki_sha256(load_certificate(ak_chain[0]))
    )


def verify_tpm(
    attest: bytes,
    signature: bytes | TpmSignature,
    *,
    pcrs: Mapping[str, Mapping[int, bytes]],
    nonce: bytes,
    now: int,
    anchors: TpmAnchors,
    ak_chain: Sequence[bytes],
) -> TpmAttestation:
    """Verify a TPM quote (see :func:`check_tpm`); every failure is the fixed
    :class:`~sealserve.errors.AttestationError`, the reason logged at DEBUG."""
    try:
        return check_tpm(
            attest, signature, pcrs=pcrs, nonce=nonce, now=now, anchors=anchors, ak_chain=ak_chain
        )
    except Rejected as exc:
        _log.event("tpm.rejected", level=logging.DEBUG, reason=str(exc))
        raise AttestationError() from None
