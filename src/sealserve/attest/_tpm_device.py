"""A TPM 2.0 (``/dev/tpmrm0``, a vTPM, or swtpm) driven through tpm2-tools.

What the ``tpm`` and ``azure-cvm`` backends ask of a TPM, each one tpm2-tools command (Debian's
``tpm2-tools``, over the TSS that ``libtss2`` provides), with the TCTI given explicitly
(``device:/dev/tpmrm0``, ``swtpm:path=SOCKET``):

* the launch PCR: reset it (:meth:`TpmDevice.reset_pcr`; PCR 23 is resettable at locality 0,
  so the launcher starts every boot of its log from zeros), extend it, read it;
* a quote over PCRs with qualifying data (:meth:`TpmDevice.quote`) by an attestation key the
  operator provisioned (a persistent handle, or a saved context);
* an NV index (:meth:`TpmDevice.nv_read`: Azure's HCL report at ``0x01400001``) and writing one
  (:meth:`TpmDevice.nv_write`: Azure asks for a fresh HCL report by writing report_data to
  ``0x01400002``);
* the **sealing root** (:meth:`TpmDevice.sealing_root`): an HMAC, by a key that is a *primary*
  object of the owner hierarchy (derived inside the TPM from its storage seed, so the same on
  every boot and never outside the TPM, with no blob on disk for a host to swap) whose use
  requires a PCR policy over the boot PCRs: only the same boot state derives the same root.

Every failure is a :class:`~sealserve.errors.TeeError` naming the command.  Without a resource
manager (swtpm's socket) transient objects and sessions are flushed after every command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from sealserve._log import get_logger
from sealserve.errors import TeeError

__all__ = ["AZURE_HCL_REPORT_NV", "AZURE_REPORT_DATA_NV", "TpmDevice", "tpm_tools_missing"]

#: Azure confidential VMs: the vTPM NV index holding the HCL report (SNP report + runtime
#: claims with the HCL attestation key), and the one that asks the paravisor for a fresh one.
AZURE_HCL_REPORT_NV: Final = 0x01400001
AZURE_REPORT_DATA_NV: Final = 0x01400002
#: Azure's HCL attestation key, a persistent handle of the vTPM.
AZURE_AK_HANDLE: Final = "0x81000003"
_TOOLS: Final = (
    "tpm2_pcrreset",
    "tpm2_pcrextend",
    "tpm2_pcrread",
    "tpm2_quote",
    "tpm2_nvread",
    "tpm2_createprimary",
    "tpm2_createpolicy",
    "tpm2_startauthsession",
    "tpm2_policypcr",
    "tpm2_hmac",
    "tpm2_flushcontext",
)
_TIMEOUT_S: Final = 60.0
_SEALING_LABEL: Final = b"sealserve/tpm-sealing-root/v1"
_log = get_logger(__name__)


def tpm_tools_missing() -> str | None:
    """The first tpm2-tools command not on PATH, or None."""
    return next((tool for tool in _TOOLS if shutil.which(tool) is None), None)


class TpmDevice:
    """One TPM reached through ``tcti``; ``boot_pcrs`` are the PCRs (SHA-256 bank) the sealing
    root is bound to."""

    def __init__(
        self,
        *,
        tcti: str,
        boot_pcrs: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7),
        flush: bool | None = None,
    ) -> None:
        if not isinstance(tcti, str) or ":" not in tcti:
            raise ValueError(f"tcti must look like 'device:/dev/tpmrm0', got {tcti!r}")
        for index in boot_pcrs:
            _check_pcr(index)
        self._tcti = tcti
        self._boot_pcrs = tuple(boot_pcrs)
        # A resource manager (tpmrm, abrmd) flushes for us; a raw device or swtpm does not.
        self._flush = flush if flush is not None else not tcti.startswith("device:/dev/tpmrm")

    @property
    def tcti(self) -> str:
        return self._tcti

    def check_tools(self) -> None:
        missing = tpm_tools_missing()
        if missing is not None:
            raise TeeError(
                f"{missing} is not installed: install tpm2-tools (apt install tpm2-tools)"
            )

    # -- PCRs ---------------------------------------------------------------------------------

    def reset_pcr(self, index: int) -> None:
        self.run("tpm2_pcrreset", str(_check_pcr(index)))

    def extend(self, index: int, digest: bytes) -> None:
        """Extend PCR ``index`` of the SHA-256 bank with a 32-byte digest."""
        if len(digest) != 32:
            raise ValueError(f"a SHA-256 PCR extension is 32 bytes, got {len(digest)}")
        self.run("tpm2_pcrextend", f"{_check_pcr(index)}:sha256={bytes(digest).hex()}")

    def read_pcrs(self, indices: Sequence[int]) -> dict[int, bytes]:
        """The SHA-256 bank's values of ``indices``."""
        ordered = sorted({_check_pcr(i) for i in indices})
        with tempfile.TemporaryDirectory(prefix="sealserve-tpm-") as tmp:
            out = Path(tmp) / "pcrs"
            self.run("tpm2_pcrread", f"sha256:{','.join(map(str, ordered))}", "-o", str(out))
            values = out.read_bytes()
        if len(values) != 32 * len(ordered):
            raise TeeError(f"tpm2_pcrread returned {len(values)} bytes for {len(ordered)} PCRs")
        return {index: values[32 * i : 32 * (i + 1)] for i, index in enumerate(ordered)}

    # -- quotes -------------------------------------------------------------------------------

    def quote(
        self, *, ak: str, qualifying_data: bytes, pcrs: Sequence[int], scheme: str = "rsassa"
    ) -> tuple[bytes, bytes, bytes]:
        """A quote by the attestation key ``ak`` (a persistent handle like ``0x81000003`` or a
        saved context file) over the SHA-256 PCRs ``pcrs``: (TPMS_ATTEST, TPMT_SIGNATURE, the
        selected PCR values concatenated in ascending order)."""
        if not 0 < len(qualifying_data) <= 64:
            raise ValueError(f"qualifying_data must be 1 to 64 bytes, got {len(qualifying_data)}")
        if scheme not in ("rsassa", "rsapss", "ecdsa"):
            raise ValueError(f"scheme must be rsassa, rsapss or ecdsa, got {scheme!r}")
        ordered = sorted({_check_pcr(i) for i in pcrs})
        with tempfile.TemporaryDirectory(prefix="sealserve-tpm-") as tmp:
            msg, sig, values = Path(tmp) / "msg", Path(tmp) / "sig", Path(tmp) / "pcrs"
            self.run(
                "tpm2_quote",
                "-c", ak,
                "-l", f"sha256:{','.join(map(str, ordered))}",
                "-q", bytes(qualifying_data).hex(),
                "-m", str(msg),
                "-s", str(sig),
                "-o", str(values),
                "-F", "values",
                "-g", "sha256",
                "--scheme", scheme,
            )  # fmt: skip
            return msg.read_bytes(), sig.read_bytes(), values.read_bytes()

    # -- NV -----------------------------------------------------------------------------------

    def nv_read(self, index: int) -> bytes:
        with tempfile.TemporaryDirectory(prefix="sealserve-tpm-") as tmp:
            out = Path(tmp) / "nv"
            self.run("tpm2_nvread", f"{index:#x}", "-C", "o", "-o", str(out))
            return out.read_bytes()

    def nv_write(self, index: int, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="sealserve-tpm-") as tmp:
            src = Path(tmp) / "in"
            src.write_bytes(bytes(data))
            self.run("tpm2_nvwrite", f"{index:#x}", "-C", "o", "-i", str(src))

    # -- the sealing root ---------------------------------------------------------------------

    def sealing_root(self) -> bytes:
        """32 bytes only this TPM, in this boot state (``boot_pcrs``), derives (see the module
        docstring)."""
        selection = f"sha256:{','.join(map(str, self._boot_pcrs))}"
        with tempfile.TemporaryDirectory(prefix="sealserve-tpm-") as tmp:
            work = Path(tmp)
            policy, key, session = work / "pcr.policy", work / "hmac.ctx", work / "session.ctx"
            data, out = work / "label", work / "hmac"
            data.write_bytes(_SEALING_LABEL)
            self.run("tpm2_createpolicy", "--policy-pcr", "-l", selection, "-L", str(policy))
            # A keyed-hash primary: its key is derived from the owner seed and this template,
            # generated inside the TPM (sensitivedataorigin), usable only under the PCR policy
            # (no userwithauth), never duplicable (fixedtpm, fixedparent).
            self.run(
                "tpm2_createprimary",
                "-C", "o",
                "-G", "hmac",
                "-g", "sha256",
                "-L", str(policy),
                "-a", "fixedtpm|fixedparent|sensitivedataorigin|sign",
                "-c", str(key),
                flush=False,
            )  # fmt: skip
            try:
                self.run(
                    "tpm2_startauthsession", "--policy-session", "-S", str(session), flush=False
                )
                self.run("tpm2_policypcr", "-S", str(session), "-l", selection, flush=False)
                self.run(
                    "tpm2_hmac",
                    "-c", str(key),
                    "-p", f"session:{session}",
                    "-g", "sha256",
                    "-o", str(out),
                    str(data),
                    flush=False,
                )  # fmt: skip
                root = out.read_bytes()
            finally:
                self._flush_all()
        if len(root) != 32:
            raise TeeError(f"tpm2_hmac returned {len(root)} bytes, not 32")
        return root

    # -- running the tools --------------------------------------------------------------------

    def run(self, tool: str, *args: str, flush: bool = True) -> bytes:
        """Run one tpm2-tools command; its stdout.  :class:`TeeError` when it fails."""
        env = dict(os.environ, TPM2TOOLS_TCTI=self._tcti)
        executable = shutil.which(tool)
        if executable is None:
            raise TeeError(f"{tool} is not installed: install tpm2-tools")
        try:
            done = subprocess.run(
                [executable, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TeeError(f"{tool} did not finish in {_TIMEOUT_S:.0f} s") from None
        finally:
            if flush:
                self._flush_all()
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise TeeError(
                f"{tool} failed (status {done.returncode}): {message[-1] if message else '?'}"
            )
        return done.stdout

    def _flush_all(self) -> None:
        if not self._flush:
            return
        env = dict(os.environ, TPM2TOOLS_TCTI=self._tcti)
        flush = shutil.which("tpm2_flushcontext")
        if flush is None:
            return
        for kind in ("-t", "-l", "-s"):
            subprocess.run(
                [flush, kind],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_TIMEOUT_S,
                check=False,
            )

    def __repr__(self) -> str:
        return f"TpmDevice(tcti={self._tcti!r})"


def _check_pcr(index: object) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 23:
        raise ValueError(f"a PCR index is 0 to 23, got {index!r}")
    return index
