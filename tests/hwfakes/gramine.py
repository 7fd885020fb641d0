"""A fake of Gramine's ``/dev/attestation`` pseudo-filesystem, as a directory tree.

:class:`FakeGramine` plays Gramine inside an SGX enclave for a plain directory: a helper
thread serves ``quote`` (a FIFO) with a quote over the last 64 bytes written to
``user_report_data`` (a FIFO it drains), as Gramine does; ``attestation_type`` says ``dcap``;
``keys/_sgx_mrenclave`` holds the enclave's 16-byte MRENCLAVE sealing key, derived from the
fake CPU's secret and the fake enclave's MRENCLAVE (as EGETKEY does).  Quotes are made by
``make_quote(report_data)``; the default is :func:`synthetic_sgx_quote` (real layout, unsigned).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

_POLL_S = 0.0005
_INTEL_QE_VENDOR = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


def synthetic_sgx_quote(
    report_data: bytes, *, mrenclave: bytes = b"\x22" * 32, mrsigner: bytes = b"\x33" * 32
) -> bytes:
    """An SGX quote (v3) in the real layout with ``mrenclave``, ``mrsigner`` and
    ``report_data``; its signature is zeros: it parses, it never verifies."""
    header = struct.pack("<HHIHH", 3, 2, 0, 0, 0) + _INTEL_QE_VENDOR + bytes(20)
    body = bytearray(384)
    body[64:96] = mrenclave
    body[128:160] = mrsigner
    body[320:384] = report_data
    qe_cert = bytes(384) + bytes(64) + struct.pack("<H", 0) + struct.pack("<HI", 5, 0)
    signature = bytes(64) + bytes(64) + struct.pack("<HI", 6, len(qe_cert)) + qe_cert
    return header + bytes(body) + struct.pack("<I", len(signature)) + signature


class FakeGramine:
    """``/dev/attestation`` for ``root``; a context manager that runs the helper thread."""

    def __init__(
        self,
        root: Path,
        *,
        mrenclave: bytes = b"\x22" * 32,
        cpu_secret: bytes | None = None,
        make_quote: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.root = Path(root)
        self.mrenclave = mrenclave
        self.cpu_secret = cpu_secret or secrets.token_bytes(32)
        self.make_quote = make_quote or (lambda rd: synthetic_sgx_quote(rd, mrenclave=mrenclave))
        self.user_report_data = bytes(64)
        self._pending = False  # user_report_data was written and its quote not yet served
        self.quotes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-gramine", daemon=True)
        self._fd = -1

    def __enter__(self) -> FakeGramine:
        (self.root / "keys").mkdir(parents=True, exist_ok=True)
        (self.root / "attestation_type").write_text("dcap\n")
        key = hashlib.sha256(b"egetkey" + self.cpu_secret + self.mrenclave).digest()[:16]
        (self.root / "keys" / "_sgx_mrenclave").write_bytes(key)
        os.mkfifo(self.root / "user_report_data", 0o600)
        os.mkfifo(self.root / "quote", 0o600)
        self._fd = os.open(self.root / "user_report_data", os.O_RDONLY | os.O_NONBLOCK)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                return
            if not data:
                return
            self.user_report_data = data[-64:].ljust(64, b"\0")
            self._pending = True

    def _run(self) -> None:
        # One quote per write of user_report_data, as the reader always writes it first. A
        # reader that took its quote but has not yet read EOF still holds the FIFO open, so an
        # open() succeeding is no proof of a new read: serving it again would append a second
        # quote to the first (seen on a loaded machine as a quote that does not verify).
        while not self._stop.is_set():
            self._drain()
            if not self._pending:
                time.sleep(_POLL_S)
                continue
            try:
                fd = os.open(self.root / "quote", os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(_POLL_S)
                continue
            try:
                os.set_blocking(fd, True)
                self._drain()
                self._pending = False
                self.quotes += 1
                view = memoryview(self.make_quote(self.user_report_data))
                while view:
                    view = view[os.write(fd, view) :]
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)
            time.sleep(_POLL_S)
