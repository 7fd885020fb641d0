"""TLS helpers: the throwaway local CA, server and client contexts, and their refusals."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from sealserve._tls import TlsFiles, client_context, make_local_ca, server_context


def test_the_local_ca_signs_one_server_certificate_for_the_names_and_forgets_its_key(
    tmp_path: Path,
) -> None:
    now = datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC)
    made = make_local_ca(tmp_path / "tls", hosts=["127.0.0.1", "localhost", "127.0.0.1"], now=now)
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "ca.pem", "server.key", "server.pem",
    ]  # fmt: skip
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert made.server.key.stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate(made.ca_bundle.read_bytes())
    leaf = x509.load_pem_x509_certificate(made.server.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer == ca.subject
    ca.public_key().verify(  # type: ignore[call-arg]
        leaf.signature, leaf.tbs_certificate_bytes, leaf.signature_algorithm_parameters
    )
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.not_valid_before_utc < now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - now < datetime.timedelta(days=31)
    server = server_context(made.server)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    client = client_context(made.ca_bundle)
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    again = make_local_ca(tmp_path / "tls", hosts=["localhost"])  # a new CA each time
    assert again.ca_bundle.read_bytes() != ca.public_bytes(Encoding.PEM)


def test_bad_files_are_refused_with_their_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TLS cert file '.*none\.pem' does not exist"):
        TlsFiles(cert=tmp_path / "none.pem", key=tmp_path / "none.key")
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        server_context(TlsFiles(cert=junk, key=junk))
    with pytest.raises(ValueError, match="cannot load the CA bundle"):
        client_context(junk)
    with pytest.raises(ValueError, match="does not exist"):
        client_context(tmp_path / "absent.pem")
    with pytest.raises(ValueError, match="at least one"):
        make_local_ca(tmp_path / "x", hosts=[""])
    files = make_local_ca(tmp_path / "ok", hosts=["localhost"]).server
    assert files.args() == ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]
    assert isinstance(client_context(None), ssl.SSLContext)


def test_the_tls_settings_go_in_pairs_and_the_store_url_is_read(tmp_path: Path) -> None:
    from sealserve.config import load_settings
    from sealserve.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'tls\.cert' and 'tls\.key' go together"):
        load_settings(env={"SEALSERVE_TLS_CERT": str(tmp_path / "c.pem")})
    loaded = load_settings(
        env={
            "SEALSERVE_TLS_CERT": "c.pem",
            "SEALSERVE_TLS_KEY": "k.pem",
            "SEALSERVE_TLS_CA_BUNDLE": "ca.pem",
            "SEALSERVE_STORE_URL": "s3://bucket/models",
            "SEALSERVE_GATEWAY_MAX_MODEL_BYTES": "1000000",
        }
    )
    assert (loaded.tls.cert, loaded.tls.key, loaded.tls.ca_bundle) == (
        Path("c.pem"), Path("k.pem"), Path("ca.pem"),
    )  # fmt: skip
    assert loaded.store.url == "s3://bucket/models"
    assert loaded.gateway.max_model_bytes == 1_000_000
    with pytest.raises(ConfigError, match="upload_chunk_bytes"):
        load_settings(env={"SEALSERVE_GATEWAY_UPLOAD_CHUNK_BYTES": "10"})
