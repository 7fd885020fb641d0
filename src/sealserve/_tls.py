"""TLS for every service and client: server contexts, client contexts, a throwaway local CA.

TLS here carries metadata privately (ids, sizes, timings, which model a user asks for) and
authenticates the server to its clients; it protects no secret of its own.  Every model,
input and output is already sealed end to end, and every key crosses the network wrapped to
an attested key, so a TLS key in the hands of an untrusted host (the gateway's, an instance
host's) exposes metadata only, never a model or a key.

::

    server = server_context(TlsFiles(cert="server.pem", key="server.key"))  # ssl.SSLContext
    client = client_context("ca.pem")       # verifies against this bundle (or the system's)
    files = make_local_ca(folder, hosts=["127.0.0.1", "localhost"])  # `sealserve up --tls`

:func:`make_local_ca` writes a CA certificate and one server certificate signed by it for
the given names; the CA's private key is never written (nobody can mint another certificate
it vouches for once the call returns).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = [
    "LocalCa",
    "TlsFiles",
    "client_context",
    "make_local_ca",
    "server_context",
]

_VALIDITY: Final = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """A server's certificate chain and private key (PEM files)."""

    cert: Path
    key: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", Path(self.cert))
        object.__setattr__(self, "key", Path(self.key))
        for name in ("cert", "key"):
            path = getattr(self, name)
            if not path.is_file():
                raise ValueError(f"TLS {name} file '{path}' does not exist")

    def args(self, prefix: str = "--tls") -> list[str]:
        """The command-line flags that pass these files on (``--tls-cert F --tls-key F``)."""
        return [f"{prefix}-cert", str(self.cert), f"{prefix}-key", str(self.key)]


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or later, the certificate chain and key of ``files``;
    ``ValueError`` naming the files if they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"cannot load the TLS certificate '{files.cert}' with key '{files.key}': {exc}"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def client_context(ca_bundle: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client-side context that verifies servers (and their names) against ``ca_bundle``
    (a PEM file), or against the system's roots when ``None``."""
    if ca_bundle is None:
        return ssl.create_default_context()
    path = Path(ca_bundle)
    if not path.is_file():
        raise ValueError(f"the CA bundle '{path}' does not exist")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot load the CA bundle '{path}': {exc}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalCa:
    """What :func:`make_local_ca` wrote: the CA certificate clients trust, and the server
    certificate and key every service on this machine presents."""

    ca_bundle: Path
    server: TlsFiles


def make_local_ca(
    folder: str | os.PathLike[str],
    *,
    hosts: Iterable[str],
    now: datetime.datetime | None = None,
) -> LocalCa:
    """Make a throwaway CA and a server certificate it signs for ``hosts`` (IP addresses or
    DNS names), valid 30 days; write ``ca.pem``, ``server.pem`` and ``server.key`` (0600)
    into ``folder`` (0700), replacing what was there.  The CA's key is not kept."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = list(dict.fromkeys(h for h in hosts if h))
    if not names:
        raise ValueError("hosts must name at least one address or DNS name")
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    end = start + _VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealserve local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for host in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(folder)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ca_path = out / "ca.pem"
    cert_path = out / "server.pem"
    key_path = out / "server.key"
    _write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(cert_path, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(
        key_path,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    return LocalCa(ca_bundle=ca_path, server=TlsFiles(cert=cert_path, key=key_path))


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)
