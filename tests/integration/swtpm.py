"""A private software TPM 2.0 for the tests: swtpm, its local CA, tpm2-tools.

:class:`Swtpm` manufactures a TPM with ``swtpm_setup`` (an EK and its certificate issued by
swtpm's local CA, in a CA directory of its own), runs ``swtpm socket`` on a private Unix socket,
and drives it with tpm2-tools through ``TPM2TOOLS_TCTI=swtpm:path=<socket>``.  There is no
resource manager in front of it, so every tool run is followed by flushing transient objects
and sessions (a TPM holds only a few).

It also plays the attestation-key CA a cloud would run: :meth:`Swtpm.certify_ak` proves with
credential activation (``tpm2_makecredential`` / ``tpm2_activatecredential``) that the AK is
resident in the TPM whose EK certificate chains to the local CA, then issues the AK a
certificate signed by the local CA's key.  Used by the TPM verifier's live test and meant for the
TPM evidence backend's tests too (the ``swtpm`` fixture in tests/integration/conftest.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["Ak", "Swtpm", "swtpm_missing"]

TOOLS: Final = ("swtpm", "swtpm_setup", "swtpm_localca", "tpm2_quote", "tpm2_createak")
_EK_CERT_RSA_NV: Final = "0x1c00002"
_START_TIMEOUT_S: Final = 10.0
_TOOL_TIMEOUT_S: Final = 60.0


def swtpm_missing() -> str | None:
    """The first tool missing from PATH (scripts/ci-deps installs them), or None."""
    return next((tool for tool in TOOLS if shutil.which(tool) is None), None)


@dataclasses.dataclass(frozen=True)
class Ak:
    """An attestation key made by tpm2_createak: its saved context, public key and name."""

    context: Path
    public_pem: bytes
    name: bytes
    scheme: str


class Swtpm:
    """One manufactured swtpm, running until :meth:`stop` (a context manager too)."""

    def __init__(self, root: Path | None = None) -> None:
        # Unix socket paths are limited to 107 bytes: keep the directory short.
        self.root = Path(tempfile.mkdtemp(prefix="swtpm-")) if root is None else root
        self.state = self.root / "state"
        self.ca_dir = self.root / "ca"
        self.work = self.root / "work"
        self.socket = self.root / "tpm.sock"
        self._process: subprocess.Popen[bytes] | None = None
        self._ek_context: Path | None = None
        self._counter = 0

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Swtpm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for folder in (self.state, self.ca_dir, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        self._manufacture()
        log = (self.root / "swtpm.log").open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={self.state}",
                    "--server",
                    f"type=unixio,path={self.socket}",
                    "--ctrl",
                    f"type=unixio,path={self.socket}.ctrl",
                    "--flags",
                    "startup-clear",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        # Bounded: until the socket appears, the process dies, or the deadline.
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"swtpm did not start (see {self.root / 'swtpm.log'})")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    # -- tools ------------------------------------------------------------------------------

    def tool(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
        """Run one tpm2-tools command against this TPM, then flush transient objects."""
        result = self._run(*args)
        self._run("tpm2_flushcontext", "-t")
        self._run("tpm2_flushcontext", "-s")
        return result

    def path(self, name: str) -> Path:
        self._counter += 1
        return self.work / f"{self._counter:03d}-{name}"

    def ek_certificate(self) -> bytes:
        """The RSA EK certificate swtpm_setup stored in NV (DER)."""
        out = self.path("ek.der")
        self.tool("tpm2_nvread", _EK_CERT_RSA_NV, "-C", "o", "-o", out)
        return out.read_bytes()

    def ca_certificates(self) -> tuple[bytes, bytes]:
        """The local CA's (root, intermediate) certificates, PEM."""
        return (
            (self.ca_dir / "swtpm-localca-rootca-cert.pem").read_bytes(),
            (self.ca_dir / "issuercert.pem").read_bytes(),
        )

    def create_ak(self, scheme: str = "rsassa") -> Ak:
        """An AK under the endorsement hierarchy: RSA for rsassa/rsapss, ECC P-256 for ecdsa."""
        key_type = "ecc" if scheme == "ecdsa" else "rsa"
        context, public, name = self.path("ak.ctx"), self.path("ak.pem"), self.path("ak.name")
        self.tool(
            "tpm2_createak",
            "-C",
            self._ek(),
            "-c",
            context,
            "-G",
            key_type,
            "-g",
            "sha256",
            "-s",
            scheme,
            "-u",
            public,
            "-f",
            "pem",
            "-n",
            name,
        )
        return Ak(context, public.read_bytes(), name.read_bytes(), scheme)

    def quote(
        self, ak: Ak, *, nonce: bytes, pcrs: str = "sha256:0,1,2,3,4,5,6,7"
    ) -> tuple[bytes, bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE, the selected PCR values concatenated)."""
        msg, sig, values = self.path("q.msg"), self.path("q.sig"), self.path("q.pcrs")
        self.tool(
            "tpm2_quote",
            "-c",
            ak.context,
            "-l",
            pcrs,
            "-q",
            nonce.hex(),
            "-m",
            msg,
            "-s",
            sig,
            "-o",
            values,
            "-F",
            "values",
            "-g",
            "sha256",
            "--scheme",
            ak.scheme,
        )
        return msg.read_bytes(), sig.read_bytes(), values.read_bytes()

    def extend(self, index: int, digest: bytes) -> None:
        self.tool("tpm2_pcrextend", f"{index}:sha256={digest.hex()}")

    def activate_credential(self, ak: Ak, secret: bytes) -> bytes:
        """What the TPM recovers from a credential made for ``ak``'s name under the EK."""
        ek_public = self.path("ek.pub")
        self.tool("tpm2_readpublic", "-c", self._ek(), "-o", ek_public)
        secret_file, blob = self.path("secret"), self.path("cred")
        secret_file.write_bytes(secret)
        self._run(
            "tpm2_makecredential",
            "-T",
            "none",
            "-u",
            ek_public,
            "-s",
            secret_file,
            "-n",
            ak.name.hex(),
            "-o",
            blob,
        )
        session, recovered = self.path("session.ctx"), self.path("recovered")
        self._run("tpm2_startauthsession", "--policy-session", "-S", session)
        try:
            self._run("tpm2_policysecret", "-S", session, "-c", "e")
            self._run(
                "tpm2_activatecredential",
                "-c",
                ak.context,
                "-C",
                self._ek(),
                "-i",
                blob,
                "-o",
                recovered,
                "-P",
                f"session:{session}",
            )
        finally:
            self._run("tpm2_flushcontext", session)
            self._run("tpm2_flushcontext", "-t")
        return recovered.read_bytes()

    def certify_ak(self, ak: Ak, *, now: int) -> bytes:
        """The AK's certificate from the local CA, after proving the AK lives with the EK.

        What a cloud's AK CA does: the EK certificate must chain to the CA, and the TPM must
        recover a fresh secret encrypted to the EK for the AK's name.
        """
        from sealserve.attest._certs import load_certificates, verify_chain

        root_pem, issuer_pem = self.ca_certificates()
        ek_cert = x509.load_der_x509_certificate(self.ek_certificate())
        verify_chain(
            [ek_cert, *load_certificates(issuer_pem)],
            load_certificates(root_pem),
            now=now,
            what="the EK certificate",
        )
        secret = os.urandom(32)
        if self.activate_credential(ak, secret) != secret:
            raise RuntimeError("the TPM did not recover the credential: the AK is not its own")
        issuer = x509.load_pem_x509_certificate(issuer_pem)
        ak_key = serialization.load_pem_public_key(ak.public_pem)
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swtpm AK")]))
            .issuer_name(issuer.subject)
            .public_key(ak_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(at - datetime.timedelta(minutes=5))
            .not_valid_after(at + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._ca_signing_key(), hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    # -- internals --------------------------------------------------------------------------

    def _manufacture(self) -> None:
        (self.root / "localca.conf").write_text(
            f"statedir = {self.ca_dir}\n"
            f"signingkey = {self.ca_dir}/signkey.pem\n"
            f"issuercert = {self.ca_dir}/issuercert.pem\n"
            f"certserial = {self.ca_dir}/certserial\n"
        )
        (self.root / "localca.options").write_text(
            "--platform-manufacturer sealserve-tests\n"
            "--platform-version 2.1\n"
            "--platform-model swtpm\n"
        )
        (self.root / "setup.conf").write_text(
            f"create_certs_tool = {shutil.which('swtpm_localca')}\n"
            f"create_certs_tool_config = {self.root}/localca.conf\n"
            f"create_certs_tool_options = {self.root}/localca.options\n"
            "active_pcr_banks = sha256\n"
        )
        subprocess.run(
            [
                "swtpm_setup",
                "--tpm2",
                "--tpmstate",
                str(self.state),
                "--config",
                str(self.root / "setup.conf"),
                "--create-ek-cert",
                "--create-platform-cert",
                "--overwrite",
            ],
            check=True,
            capture_output=True,
            timeout=_TOOL_TIMEOUT_S,
        )

    def _ek(self) -> Path:
        if self._ek_context is None:
            context = self.path("ek.ctx")
            self.tool("tpm2_createek", "-c", context, "-G", "rsa")
            self._ek_context = context
        return self._ek_context

    def _ca_signing_key(self) -> rsa.RSAPrivateKey:
        # swtpm_localca writes its key as GnuTLS does: a text description, then the PEM.
        text = (self.ca_dir / "signkey.pem").read_bytes()
        key = serialization.load_pem_private_key(text[text.index(b"-----BEGIN") :], None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise RuntimeError("swtpm's local CA key is not an RSA key")
        return key

    def _run(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        result = subprocess.run(
            [str(a) for a in args],
            env=env,
            capture_output=True,
            timeout=_TOOL_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.decode()[-2000:]}"
            )
        return result
