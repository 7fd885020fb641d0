"""A throwaway software TPM (Debian's swtpm) on a private Unix socket, for the TPM backends.

Unmanufactured (no EK certificate): enough for PCRs, quotes by an AK made under an EK created
from the default template, NV indices and HMAC keys.  The certified-AK fixture of the TPM
verifier's tests adds swtpm_setup's local CA on top.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

TOOLS = ("swtpm", "tpm2_pcrreset", "tpm2_quote", "tpm2_createak", "tpm2_nvdefine", "tpm2_hmac")


def swtpm_missing() -> str | None:
    return next((tool for tool in TOOLS if shutil.which(tool) is None), None)


class PlainSwtpm:
    """``with PlainSwtpm() as tpm: tpm.tcti``; stops and removes everything on exit."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sw-"))  # short: a Unix socket path
        self.socket = self.root / "s"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    def __enter__(self) -> PlainSwtpm:
        (self.root / "state").mkdir()
        self._process = subprocess.Popen(
            [
                "swtpm", "socket", "--tpm2",
                "--tpmstate", f"dir={self.root / 'state'}",
                "--server", f"type=unixio,path={self.socket}",
                "--ctrl", f"type=unixio,path={self.socket}.ctrl",
                "--flags", "not-need-init,startup-clear",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.socket.exists():  # bounded by the deadline
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("swtpm did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def tool(self, *args: str) -> bytes:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        done = subprocess.run(list(args), env=env, capture_output=True, check=True, timeout=60)
        for kind in ("-t", "-l", "-s"):
            subprocess.run(
                ["tpm2_flushcontext", kind], env=env, capture_output=True, check=False, timeout=60
            )
        return done.stdout

    def create_ak(self) -> Path:
        """An RSA AK (RSASSA, SHA-256) under an EK; its saved context."""
        ek, ak = self.root / "ek.ctx", self.root / "ak.ctx"
        self.tool("tpm2_createek", "-c", str(ek), "-G", "rsa", "-u", str(self.root / "ek.pub"))
        self.tool(
            "tpm2_createak", "-C", str(ek), "-c", str(ak), "-G", "rsa", "-g", "sha256",
            "-s", "rsassa", "-u", str(self.root / "ak.pub"), "-f", "pem",
        )  # fmt: skip
        return ak
