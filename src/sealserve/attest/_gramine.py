"""The ``gramine`` backend: SGX DCAP quotes and sealing keys inside a Gramine enclave.

With SGX the enclave is the runtime process alone (as in SeSeMI): Gramine loads the Python
interpreter, the measured sealserve snapshot and the native libraries as *trusted files* whose
hashes are in the manifest, and the CPU measures the manifest into MRENCLAVE.  Inside the
enclave, Gramine's pseudo-filesystem ``/dev/attestation`` is the attestation interface:

* write the 64-byte report_data to ``user_report_data``, then read ``quote``: a DCAP quote
  (``attestation_type`` says ``dcap``) whose report_data is what was just written;
* read ``keys/_sgx_mrenclave``: the 16-byte sealing key EGETKEY derives for this MRENCLAVE
  (and this CPU), the root of :func:`sealing_key`.

:class:`GramineAttestation` does both for the process it runs in; :func:`gramine_manifest`
writes the manifest template of an entry (``sealserve attest gramine-manifest``).  Quotes are
verified with dcap-qvl like every SGX quote (format ``sgx-dcap``); policies pin MRENCLAVE,
which ``gramine-sgx-sign`` prints for the manifest.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from sealserve._log import get_logger
from sealserve.attest._entries import entry_module
from sealserve.attest._evidence import FORMAT_SGX_DCAP, REPORT_DATA_BYTES, Evidence
from sealserve.errors import TeeError

__all__ = ["DEFAULT_ATTESTATION_DIR", "GramineAttestation", "gramine_manifest"]

DEFAULT_ATTESTATION_DIR: Final = Path("/dev/attestation")
_MAX_QUOTE: Final = 64 * 1024
#: Where the report_data sits in an SGX DCAP quote: header (48) + report body offset 320.
_QUOTE_REPORT_DATA: Final = slice(48 + 320, 48 + 384)
_log = get_logger(__name__)


class GramineAttestation:
    """Gramine's ``/dev/attestation`` for the enclave this process runs in."""

    def __init__(
        self,
        directory: str | os.PathLike[str] = DEFAULT_ATTESTATION_DIR,
        *,
        collateral: bytes | None = None,
    ) -> None:
        self._dir = Path(directory)
        self._collateral = collateral
        self._lock = threading.Lock()

    def check(self) -> None:
        """:class:`TeeError` unless this process runs in a Gramine SGX enclave with DCAP."""
        try:
            kind = (self._dir / "attestation_type").read_text().strip()
        except OSError as exc:
            raise TeeError(
                f"no Gramine attestation interface at '{self._dir}': not inside a Gramine SGX "
                f"enclave ({exc.strerror or exc}); launch through gramine-sgx with the manifest "
                "of 'sealserve attest gramine-manifest'"
            ) from exc
        if kind != "dcap":
            raise TeeError(
                f'Gramine\'s attestation type is {kind!r}; set sgx.remote_attestation = "dcap"'
            )

    def quote(self, report_data: bytes) -> bytes:
        """A DCAP quote whose report_data is ``report_data`` (checked before it is returned)."""
        data = bytes(report_data)
        if len(data) != REPORT_DATA_BYTES:
            raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(data)}")
        with self._lock:  # one writer at a time: the quote is over the last write
            try:
                fd = os.open(self._dir / "user_report_data", os.O_WRONLY)
                try:
                    written = os.write(fd, data)
                finally:
                    os.close(fd)
                with (self._dir / "quote").open("rb") as fh:
                    quote = fh.read(_MAX_QUOTE + 1)
            except OSError as exc:
                raise TeeError(f"Gramine's attestation interface failed: {exc}") from exc
        if written != len(data):
            raise TeeError("Gramine took a short write of user_report_data")
        if not 0 < len(quote) <= _MAX_QUOTE:
            raise TeeError(f"Gramine returned a quote of {len(quote)} bytes")
        if quote[_QUOTE_REPORT_DATA] != data:
            raise TeeError("Gramine returned a quote over other report_data")
        return quote

    def evidence(self, report_data: bytes) -> Evidence:
        """:class:`~sealserve.attest.Evidence` (``sgx-dcap``) for ``report_data``, with the
        collateral this attestation was given (the operator's cached PCK collateral)."""
        if self._collateral is None:
            raise TeeError(
                "no DCAP collateral to send with the quote: give the Gramine backend the "
                "collateral file (attest.dcap_collateral) fetched for this platform's FMSPC"
            )
        evidence = Evidence.from_quote(self.quote(report_data), collateral=self._collateral)
        if evidence.format != FORMAT_SGX_DCAP:
            raise TeeError("Gramine returned a quote that is not an SGX quote")
        return evidence

    def sealing_root(self) -> bytes:
        """The MRENCLAVE sealing key (16 bytes from EGETKEY), stretched to 32 bytes."""
        try:
            key = (self._dir / "keys" / "_sgx_mrenclave").read_bytes()
        except OSError as exc:
            raise TeeError(f"cannot read Gramine's MRENCLAVE sealing key: {exc}") from exc
        if len(key) != 16:
            raise TeeError(f"Gramine's MRENCLAVE sealing key has {len(key)} bytes, not 16")
        return hashlib.sha256(b"sealserve/gramine-sealing-root\x00" + key).digest()


def gramine_manifest(
    entry: str,
    *,
    snapshot: str | os.PathLike[str],
    config: Mapping[str, str] | None = None,
    python: str | None = None,
    enclave_size: str = "4G",
    threads: int = 64,
    collateral: str | os.PathLike[str] | None = None,
) -> str:
    """The Gramine manifest template (TOML, for ``gramine-manifest`` then ``gramine-sgx-sign``)
    that runs ``entry`` from the measured ``snapshot`` with the measured launch ``config``.

    Trusted files: the interpreter, its standard library, the snapshot, and the installed
    packages the runtime imports with their native libraries (onnxruntime, numpy,
    cryptography); the launch config and the backend are fixed environment (measured, not
    passed through); nothing is writable inside the enclave but memory: the runtime keeps keys
    in memory only.

    ``loader.argv`` is fixed (the host cannot choose the module); what the host decides comes
    through the variables the manifest passes through: the entry's unmeasured arguments
    (``SEALSERVE_ENTRY_ARGS``, see :mod:`sealserve.attest._gramine_launcher`) and, for the
    runtime, the named sockets of its host (``SEALSERVE_IPC_SOCKET``,
    ``SEALSERVE_DATA_SOCKET``): an enclave inherits no descriptor.  ``collateral`` is the
    DCAP collateral file sent with quotes: an allowed (not trusted) file, since Intel signs it
    and the host refreshes it.
    """
    import json

    module = entry_module(entry)
    interpreter = Path(python or sys.executable).resolve()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    platlib = Path(sysconfig.get_paths()["platlib"]).resolve()
    snap = Path(snapshot).resolve()
    packages = sorted({purelib, platlib})
    boot = (
        "import sys;sys.path.insert(0,sys.argv[1]);from sealserve.attest._boot import main;main()"
    )
    cfg = json.dumps(dict(config or {}), sort_keys=True)
    lines = [
        f"# sealserve {entry}: generated by 'sealserve attest gramine-manifest'",
        'libos.entrypoint = "{{ entrypoint }}"',
        'loader.entrypoint.uri = "file:{{ gramine.libos }}"',
        f'loader.argv = ["{interpreter}", "-I", "-B", "-c", {json.dumps(boot)}, '
        f'"{snap}", "{module}"]',
        "loader.insecure__use_cmdline_argv = false",
        'loader.env.LD_LIBRARY_PATH = "/lib:{{ arch_libdir }}:/usr/{{ arch_libdir }}"',
        'loader.env.PATH = "/usr/bin:/bin"',
        'loader.env.SEALSERVE_TEE_BACKEND = "gramine"',
        f'loader.env.SEALSERVE_TEE_ENTRY = "{entry}"',
        f"loader.env.SEALSERVE_TEE_CONFIG = {json.dumps(cfg)}",
        'loader.env.SEALSERVE_TEE_DEBUG = "0"',
        "loader.env.SEALSERVE_ENTRY_ARGS = { passthrough = true }",
        *(
            [
                "loader.env.SEALSERVE_IPC_SOCKET = { passthrough = true }",
                "loader.env.SEALSERVE_DATA_SOCKET = { passthrough = true }",
            ]
            if entry == "runtime"
            else []
        ),
        *(
            [f"loader.env.SEALSERVE_TEE_DCAP_COLLATERAL = {json.dumps(str(collateral))}"]
            if collateral is not None
            else []
        ),
        "",
        "fs.mounts = [",
        '  { path = "/lib", uri = "file:{{ gramine.runtimedir() }}" },',
        '  { path = "{{ arch_libdir }}", uri = "file:{{ arch_libdir }}" },',
        '  { path = "/usr/{{ arch_libdir }}", uri = "file:/usr/{{ arch_libdir }}" },',
        f'  {{ path = "{interpreter}", uri = "file:{interpreter}" }},',
        f'  {{ path = "{stdlib}", uri = "file:{stdlib}" }},',
        *(f'  {{ path = "{p}", uri = "file:{p}" }},' for p in packages),
        f'  {{ path = "{snap}", uri = "file:{snap}" }},',
        '  { type = "tmpfs", path = "/tmp" },',
        "]",
        "",
        'sgx.remote_attestation = "dcap"',
        "sgx.debug = false",
        f'sgx.enclave_size = "{enclave_size}"',
        f"sgx.max_threads = {int(threads)}",
        "sgx.edmm_enable = false",
        "sgx.trusted_files = [",
        '  "file:{{ gramine.libos }}",',
        '  "file:{{ gramine.runtimedir() }}/",',
        '  "file:{{ arch_libdir }}/",',
        '  "file:/usr/{{ arch_libdir }}/",',
        f'  "file:{interpreter}",',
        f'  "file:{stdlib}/",',
        *(f'  "file:{p}/",' for p in packages),
        f'  "file:{snap}/",',
        "]",
        *(
            [
                "# The DCAP collateral: signed by Intel, refreshed by the host, so allowed.",
                f'sgx.allowed_files = [ "file:{collateral}" ]',
            ]
            if collateral is not None
            else [
                "# No sgx.allowed_files: the enclave reads nothing the manifest does not measure."
            ]
        ),
        "",
    ]
    return "\n".join(lines)
