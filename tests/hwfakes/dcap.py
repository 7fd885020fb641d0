"""A test Intel DCAP hierarchy, generated on the spot, and quotes it signs in the real layouts.

What Intel's Provisioning Certification Service runs for real, in miniature, so that SGX and
TDX evidence reaches a key release on a machine without SGX or TDX.  A verifier trusts none of
it unless it is handed :attr:`DcapHierarchy.root_der` explicitly (``dcap-qvl``'s
``verify_with_root_ca``; sealserve's ``TrustAnchors.dcap_root_ca_der``, carried in the measured
launch configs of a test only).

* a root CA (ECDSA P-256, self-signed, as Intel's SGX Root CA), the **PCK Platform CA** it
  issues, and the **TCB signing** certificate (an end entity the root issues);
* **PCK leaf** certificates (one per platform) carrying Intel's SGX extension
  (OID 1.2.840.113741.1.13.1): PPID, the TCB (16 CPUSVN components, PCESVN, CPUSVN), PCE-ID,
  FMSPC and the SGX type;
* **collateral** (:meth:`DcapHierarchy.collateral`): TCB info (version 3, ``SGX`` or ``TDX``
  with the TDX module and its identities) and QE identity (``QE`` or ``TD_QE``), each signed
  by the TCB signing key over its exact JSON text, with their issuer chains, and the root's
  and the PCK CA's CRLs; in the JSON form ``dcap_qvl.QuoteCollateralV3.from_json`` reads (the
  form of the recorded collateral in the shared test vectors);
* **quotes**: SGX quote v3 (:meth:`DcapPlatform.sgx_quote`) and TDX quote v4
  (:meth:`DcapPlatform.tdx_quote`): header and report body signed by a fresh ECDSA
  attestation key, whose hash with the QE authentication data the QE report binds
  (report_data = SHA-256(attestation key || auth data)), the QE report signed by the PCK key,
  and certification data type 5 (the PEM chain PCK leaf, PCK CA, root): directly in an SGX
  quote, inside type 6 (QE report certification data) in a TDX quote, as Intel's QE does.

Layouts: Intel SGX ECDSA Quote Library API (quote v3) and TDX DCAP Quote Generation (quote v4).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = [
    "QE_MRSIGNER",
    "SGX_EXTENSION_OID",
    "TDQE_MRSIGNER",
    "DcapHierarchy",
    "DcapPlatform",
    "TcbLevel",
    "pck_extension",
]

SGX_EXTENSION_OID: Final = "1.2.840.113741.1.13.1"
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: What the QE identities name (Intel's QE and TD-QE signers, as in the recorded collateral).
QE_MRSIGNER: Final = bytes.fromhex(
    "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"
)
TDQE_MRSIGNER: Final = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
)
#: TD_ATTRIBUTES: SEPT_VE_DISABLE (bit 28) must be set; DEBUG is bit 0.
TD_SEPT_VE_DISABLE: Final = 1 << 28
TD_DEBUG: Final = 1
#: SGX ATTRIBUTES.FLAGS: INIT | MODE64BIT (0x05); DEBUG is 0x02.
SGX_FLAGS_PRODUCTION: Final = 0x05
SGX_FLAGS_DEBUG: Final = 0x02

_DAY: Final = datetime.timedelta(days=1)
_AUTH_DATA: Final = bytes(range(32))
_SGX_BODY: Final = 384
_TDX_BODY: Final = 584


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _pair(dotted: str, value: bytes) -> bytes:
    return _seq(_oid(dotted), value)


def pck_extension(
    *,
    ppid: bytes,
    cpu_svn: bytes,
    pce_svn: int,
    pce_id: bytes,
    fmspc: bytes,
    sgx_type: int = 0,
    platform_instance_id: bytes | None = None,
) -> bytes:
    """The DER value of Intel's SGX extension of a PCK certificate (a SEQUENCE of
    (OID, value) pairs; the TCB is a nested SEQUENCE of its 16 components, PCESVN, CPUSVN).

    ``sgx_type`` 1 (Scalable: a multi-package platform's PCK Platform CA, as TDX machines
    have) adds the platform instance id and the configuration (dynamic platform, cached keys,
    SMT enabled)."""
    if len(ppid) != 16 or len(cpu_svn) != 16 or len(pce_id) != 2 or len(fmspc) != 6:
        raise ValueError("ppid and cpu_svn are 16 bytes, pce_id 2, fmspc 6")
    base = SGX_EXTENSION_OID
    components = [_pair(f"{base}.2.{i + 1}", _int(svn)) for i, svn in enumerate(cpu_svn)]
    tcb = _seq(
        *components,
        _pair(f"{base}.2.17", _int(pce_svn)),
        _pair(f"{base}.2.18", _tlv(0x04, cpu_svn)),
    )
    items = [
        _pair(f"{base}.1", _tlv(0x04, ppid)),
        _pair(f"{base}.2", tcb),
        _pair(f"{base}.3", _tlv(0x04, pce_id)),
        _pair(f"{base}.4", _tlv(0x04, fmspc)),
        _pair(f"{base}.5", _tlv(0x0A, bytes([sgx_type]))),
    ]
    if sgx_type == 1:
        true = _tlv(0x01, b"\xff")
        items += [
            _pair(f"{base}.6", _tlv(0x04, platform_instance_id or bytes(16))),
            _pair(f"{base}.7", _seq(*(_pair(f"{base}.7.{i}", true) for i in (1, 2, 3)))),
        ]
    return _seq(*items)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TcbLevel:
    """One TCB level of a TCB info: the minimum SVNs and the status they earn."""

    cpu_svn: bytes
    pce_svn: int
    status: str = "UpToDate"
    #: TDX only: the minimum TEE_TCB_SVN (16 bytes).
    tee_tcb_svn: bytes | None = None
    advisories: tuple[str, ...] = ()
    date: str = "2024-03-13T00:00:00Z"

    def to_json(self) -> dict[str, Any]:
        tcb: dict[str, Any] = {
            "sgxtcbcomponents": [{"svn": b} for b in self.cpu_svn],
            "pcesvn": self.pce_svn,
        }
        if self.tee_tcb_svn is not None:
            tcb["tdxtcbcomponents"] = [{"svn": b} for b in self.tee_tcb_svn]
        level: dict[str, Any] = {"tcb": tcb, "tcbDate": self.date, "tcbStatus": self.status}
        if self.advisories:
            level["advisoryIDs"] = list(self.advisories)
        return level


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealserve test DCAP"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]  # x || y, without the 0x04 prefix


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _at(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DcapHierarchy:
    """A test root CA, PCK Platform CA and TCB signer, valid from ``not_before`` (Unix seconds)
    for ``days``; collateral is issued at ``issued_at`` and valid for 30 days."""

    def __init__(
        self, *, not_before: int | None = None, days: int = 3650, issued_at: int | None = None
    ) -> None:
        start = datetime.datetime.now(datetime.UTC) - _DAY
        if not_before is not None:
            start = datetime.datetime.fromtimestamp(not_before, datetime.UTC)
        self.not_before = start
        self.not_after = start + datetime.timedelta(days=days)
        self.issued_at = int(issued_at if issued_at is not None else start.timestamp() + 3600)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca(
            "sealserve test SGX Root CA", self.root_key, self.root_key, None, path_length=1
        )
        self.pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_ca = self._ca(
            "sealserve test SGX PCK Platform CA",
            self.pck_ca_key,
            self.root_key,
            self.root,
            path_length=0,
        )
        self.tcb_key = ec.generate_private_key(ec.SECP256R1())
        self.tcb_signer = self._leaf(
            "sealserve test SGX TCB Signing", self.tcb_key.public_key(), self.root_key, self.root
        )
        self.revoked: set[int] = set()

    # -- certificates ----------------------------------------------------------------------

    @property
    def root_der(self) -> bytes:
        """The root certificate (DER): what a verifier of this hierarchy's quotes trusts."""
        return self.root.public_bytes(serialization.Encoding.DER)

    def _builder(
        self, cn: str, public: ec.EllipticCurvePublicKey, issuer: x509.Certificate | None
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn) if issuer is None else issuer.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    def _ca(
        self,
        cn: str,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        *,
        path_length: int,
    ) -> x509.Certificate:
        builder = self._builder(cn, key.public_key(), issuer)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        ).add_extension(_key_usage(ca=True), critical=True)
        return builder.sign(signer, hashes.SHA256())

    def _leaf(
        self,
        cn: str,
        public: ec.EllipticCurvePublicKey,
        signer: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate,
        extensions: Sequence[x509.ExtensionType] = (),
    ) -> x509.Certificate:
        builder = (
            self._builder(cn, public, issuer)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
        )
        for ext in extensions:
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(signer, hashes.SHA256())

    def platform(
        self,
        *,
        fmspc: bytes = bytes.fromhex("00906ea10000"),
        cpu_svn: bytes = bytes([11, 11, 2, 2, 255, 1, 12] + [0] * 9),
        pce_svn: int = 13,
        pce_id: bytes = bytes(2),
        ppid: bytes | None = None,
        sgx_type: int = 0,
    ) -> DcapPlatform:
        """A platform with its PCK key and certificate (``sgx_type`` 1: a multi-package
        platform, as TDX machines are)."""
        key = ec.generate_private_key(ec.SECP256R1())
        ext = pck_extension(
            ppid=ppid or os.urandom(16),
            cpu_svn=cpu_svn,
            pce_svn=pce_svn,
            pce_id=pce_id,
            fmspc=fmspc,
            sgx_type=sgx_type,
            platform_instance_id=os.urandom(16) if sgx_type == 1 else None,
        )
        cert = self._leaf(
            "sealserve test SGX PCK Certificate",
            key.public_key(),
            self.pck_ca_key,
            self.pck_ca,
            [x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), ext)],
        )
        return DcapPlatform(
            hierarchy=self,
            pck_key=key,
            pck_cert=cert,
            chain=_pem(cert) + _pem(self.pck_ca) + _pem(self.root),
            fmspc=fmspc,
            cpu_svn=cpu_svn,
            pce_svn=pce_svn,
            pce_id=pce_id,
        )

    def revoke(self, cert: x509.Certificate) -> None:
        """Put ``cert`` (a PCK leaf) on the PCK CA's CRL of later collateral."""
        self.revoked.add(cert.serial_number)

    def _crl(
        self, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate, revoked: set[int]
    ) -> bytes:
        now = datetime.datetime.fromtimestamp(self.issued_at, datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now - _DAY)
            .next_update(now + datetime.timedelta(days=30))
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
        )
        for serial in sorted(revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - _DAY)
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    # -- collateral ------------------------------------------------------------------------

    def tcb_info(
        self,
        tee: str,
        *,
        fmspc: bytes,
        pce_id: bytes,
        levels: Sequence[TcbLevel],
        module_mrsigner: bytes = bytes(48),
        module_identities: Mapping[int, Sequence[tuple[int, str]]] | None = None,
    ) -> str:
        """TCB info JSON (version 3) for ``tee`` (``SGX`` or ``TDX``): the exact text signed."""
        if tee not in ("SGX", "TDX"):
            raise ValueError(f"tee must be SGX or TDX, got {tee!r}")
        doc: dict[str, Any] = {
            "id": tee,
            "version": 3,
            "issueDate": _at(self.issued_at),
            "nextUpdate": _at(self.issued_at + 30 * 86400),
            "fmspc": fmspc.hex().upper(),
            "pceId": pce_id.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
        }
        if tee == "TDX":
            module = {
                "mrsigner": module_mrsigner.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            }
            doc["tdxModule"] = module
            identities = module_identities or {1: [(1, "UpToDate")]}
            doc["tdxModuleIdentities"] = [
                {
                    "id": f"TDX_{version:02X}",
                    **module,
                    "tcbLevels": [
                        {
                            "tcb": {"isvsvn": isvsvn},
                            "tcbDate": "2024-03-13T00:00:00Z",
                            "tcbStatus": status,
                        }
                        for isvsvn, status in levels_
                    ],
                }
                for version, levels_ in sorted(identities.items())
            ]
        doc["tcbLevels"] = [level.to_json() for level in levels]
        return json.dumps(doc, separators=(",", ":"))

    def qe_identity(self, tee: str, *, min_isvsvn: int = 8) -> str:
        """QE identity JSON (``QE`` for SGX, ``TD_QE`` for TDX): the exact text signed."""
        sgx = tee == "SGX"
        doc = {
            "id": "QE" if sgx else "TD_QE",
            "version": 2,
            "issueDate": _at(self.issued_at),
            "nextUpdate": _at(self.issued_at + 30 * 86400),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": (QE_MRSIGNER if sgx else TDQE_MRSIGNER).hex().upper(),
            "isvprodid": 1 if sgx else 2,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": min_isvsvn},
                    "tcbDate": "2024-03-13T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }
        return json.dumps(doc, separators=(",", ":"))

    def collateral(
        self,
        tee: str,
        *,
        fmspc: bytes,
        pce_id: bytes = bytes(2),
        levels: Sequence[TcbLevel],
        module_identities: Mapping[int, Sequence[tuple[int, str]]] | None = None,
    ) -> dict[str, str]:
        """Collateral for quotes of ``tee`` from platforms of ``fmspc``, in the JSON form of
        ``dcap_qvl.QuoteCollateralV3`` (CRLs and signatures as hex)."""
        tcb_info = self.tcb_info(
            tee, fmspc=fmspc, pce_id=pce_id, levels=levels, module_identities=module_identities
        )
        qe_identity = self.qe_identity(tee)
        chain = (_pem(self.tcb_signer) + _pem(self.root)).decode()
        return {
            "pck_crl_issuer_chain": (_pem(self.pck_ca) + _pem(self.root)).decode(),
            "root_ca_crl": self._crl(self.root_key, self.root, set()).hex(),
            "pck_crl": self._crl(self.pck_ca_key, self.pck_ca, self.revoked).hex(),
            "tcb_info_issuer_chain": chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": _raw_signature(self.tcb_key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": _raw_signature(self.tcb_key, qe_identity.encode()).hex(),
        }


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=not ca,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclasses.dataclass(eq=False, kw_only=True)
class DcapPlatform:
    """One platform of a :class:`DcapHierarchy`: its PCK key and certificate and its TCB; it
    signs quotes as its quoting enclave would."""

    #: None for a platform read back with :meth:`from_json` (it signs quotes, no collateral).
    hierarchy: DcapHierarchy | None
    pck_key: ec.EllipticCurvePrivateKey
    pck_cert: x509.Certificate
    #: The PCK chain (PEM): leaf, PCK CA, root.
    chain: bytes
    fmspc: bytes
    cpu_svn: bytes
    pce_svn: int
    pce_id: bytes
    qe_svn: int = 8

    def chain_pem(self) -> bytes:
        """Certification data type 5: the PCK chain, leaf first, NUL-terminated as the QE
        writes it."""
        return self.chain + b"\0"

    def to_json(self) -> str:
        """What a quoting enclave of this platform needs to sign (for a fake in another
        process): the PCK key and chain and the TCB; never collateral."""
        key = self.pck_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return json.dumps(
            {
                "pck_key": key.decode(),
                "chain": self.chain.decode(),
                "fmspc": self.fmspc.hex(),
                "cpu_svn": self.cpu_svn.hex(),
                "pce_svn": self.pce_svn,
                "pce_id": self.pce_id.hex(),
                "qe_svn": self.qe_svn,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DcapPlatform:
        doc = json.loads(text)
        key = serialization.load_pem_private_key(doc["pck_key"].encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        chain = doc["chain"].encode()
        return cls(
            hierarchy=None,
            pck_key=key,
            pck_cert=x509.load_pem_x509_certificates(chain)[0],
            chain=chain,
            fmspc=bytes.fromhex(doc["fmspc"]),
            cpu_svn=bytes.fromhex(doc["cpu_svn"]),
            pce_svn=int(doc["pce_svn"]),
            pce_id=bytes.fromhex(doc["pce_id"]),
            qe_svn=int(doc["qe_svn"]),
        )

    def levels(self, tee: str, *, tee_tcb_svn: bytes | None = None) -> list[TcbLevel]:
        """TCB levels under which this platform is ``UpToDate`` (its own SVNs), above one
        ``OutOfDate`` level (all zero)."""
        tdx = tee == "TDX"
        return [
            TcbLevel(
                cpu_svn=self.cpu_svn,
                pce_svn=self.pce_svn,
                tee_tcb_svn=(tee_tcb_svn or bytes(16)) if tdx else None,
            ),
            TcbLevel(
                cpu_svn=bytes(16),
                pce_svn=0,
                status="OutOfDate",
                tee_tcb_svn=bytes(16) if tdx else None,
                advisories=("INTEL-SA-00000",),
                date="2018-01-04T00:00:00Z",
            ),
        ]

    def outdated_levels(self, tee: str) -> list[TcbLevel]:
        """TCB levels under which this platform is ``OutOfDate``: the up-to-date level asks
        for one more PCESVN than it has."""
        up, down = self.levels(tee)
        return [dataclasses.replace(up, pce_svn=self.pce_svn + 1), down]

    def collateral(self, tee: str, *, outdated: bool = False) -> dict[str, str]:
        levels = self.outdated_levels(tee) if outdated else self.levels(tee)
        if self.hierarchy is None:
            raise ValueError("a platform read back from JSON signs quotes only")
        return self.hierarchy.collateral(tee, fmspc=self.fmspc, pce_id=self.pce_id, levels=levels)

    def collateral_json(self, tee: str, *, outdated: bool = False) -> bytes:
        return json.dumps(self.collateral(tee, outdated=outdated)).encode()

    # -- quotes ----------------------------------------------------------------------------

    def _qe_report(self, *, tdx: bool, attestation_key: bytes) -> bytes:
        report = bytearray(_SGX_BODY)
        report[0:16] = self.cpu_svn
        report[48:64] = (0x15).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
        report[64:96] = hashlib.sha256(b"sealserve test QE" + bytes([tdx])).digest()
        report[128:160] = TDQE_MRSIGNER if tdx else QE_MRSIGNER
        report[256:260] = struct.pack("<HH", 2 if tdx else 1, self.qe_svn)
        report[320:352] = hashlib.sha256(attestation_key + _AUTH_DATA).digest()
        return bytes(report)

    def _qe_certification(self, *, tdx: bool, attestation_key: bytes) -> bytes:
        """QE report, its PCK signature, the auth data and the PCK chain (type 5)."""
        qe_report = self._qe_report(tdx=tdx, attestation_key=attestation_key)
        chain = self.chain_pem()
        return (
            qe_report
            + _raw_signature(self.pck_key, qe_report)
            + struct.pack("<H", len(_AUTH_DATA))
            + _AUTH_DATA
            + struct.pack("<HI", 5, len(chain))
            + chain
        )

    def sgx_quote(
        self,
        report_data: bytes,
        *,
        mrenclave: bytes,
        mrsigner: bytes = bytes(32),
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
    ) -> bytes:
        """An SGX quote (v3) of an enclave measuring ``mrenclave`` over ``report_data``."""
        if len(report_data) != 64 or len(mrenclave) != 32 or len(mrsigner) != 32:
            raise ValueError("report_data is 64 bytes, mrenclave and mrsigner 32")
        header = (
            struct.pack("<HHIHH", 3, 2, 0, self.qe_svn, self.pce_svn)
            + INTEL_QE_VENDOR_ID
            + bytes(20)
        )
        body = bytearray(_SGX_BODY)
        body[0:16] = self.cpu_svn
        flags = SGX_FLAGS_PRODUCTION | (SGX_FLAGS_DEBUG if debug else 0)
        body[48:64] = flags.to_bytes(8, "little") + (0x03).to_bytes(8, "little")
        body[64:96] = mrenclave
        body[128:160] = mrsigner
        body[256:260] = struct.pack("<HH", isv_prod_id, isv_svn)
        body[320:384] = report_data
        return self._sign(header + bytes(body), tdx=False)

    def tdx_quote(
        self,
        report_data: bytes,
        *,
        mrtd: bytes,
        rtmrs: Sequence[bytes] = (),
        debug: bool = False,
        tee_tcb_svn: bytes = bytes([1, 1]) + bytes(14),
    ) -> bytes:
        """A TDX quote (v4) of a TD measuring ``mrtd`` with ``rtmrs`` (RTMR0..3, zeros where
        not given) over ``report_data``."""
        if len(report_data) != 64 or len(mrtd) != 48 or len(tee_tcb_svn) != 16:
            raise ValueError("report_data is 64 bytes, mrtd 48, tee_tcb_svn 16")
        header = struct.pack("<HHI", 4, 2, 0x81) + bytes(4) + INTEL_QE_VENDOR_ID + bytes(20)
        body = bytearray(_TDX_BODY)
        body[0:16] = tee_tcb_svn
        body[16:64] = hashlib.sha384(b"sealserve test TDX module").digest()  # MRSEAM
        # MRSIGNERSEAM (64:112) and SEAMATTRIBUTES (112:120): zero, Intel's module
        attributes = TD_SEPT_VE_DISABLE | (TD_DEBUG if debug else 0)
        body[120:128] = attributes.to_bytes(8, "little")
        body[128:136] = (0x0602E7).to_bytes(8, "little")  # XFAM
        body[136:184] = mrtd
        for i, value in enumerate(rtmrs):
            if len(value) != 48:
                raise ValueError(f"RTMR{i} is 48 bytes, got {len(value)}")
            body[328 + 48 * i : 376 + 48 * i] = value
        body[520:584] = report_data
        return self._sign(header + bytes(body), tdx=True)

    def _sign(self, signed: bytes, *, tdx: bool) -> bytes:
        attestation = ec.generate_private_key(ec.SECP256R1())
        key = _raw_public(attestation)
        certification = self._qe_certification(tdx=tdx, attestation_key=key)
        signature = _raw_signature(attestation, signed) + key
        if tdx:
            signature += struct.pack("<HI", 6, len(certification)) + certification
        else:
            signature += certification
        return signed + struct.pack("<I", len(signature)) + signature
