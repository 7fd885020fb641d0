"""A fake of the kernel's configfs-tsm report interface (and TDX's RTMR3), as a directory tree.

:class:`FakeTsm` plays the kernel for a plain directory: a helper thread watches it and behaves
as Documentation/ABI/testing/configfs-tsm-report says.

* ``mkdir report/<name>`` makes an entry; the helper gives it ``provider``, ``generation``
  (regular files it rewrites atomically), and ``inblob``, ``outblob`` (and for ``sev_guest``
  ``auxblob``) as FIFOs, so that it sees each write and each read as the kernel does;
* every write to ``inblob`` (each up to 64 bytes: the fake treats each 64 bytes that arrive
  between two of its polls as one write) increments ``generation``;
* a read of ``outblob`` first takes in every write that happened before it, then returns the
  report over the *last* ``inblob`` written (generated once per generation, as the kernel
  caches it), and ``auxblob`` that report's supplemental data;
* :attr:`FakeTsm.interfere` makes a second writer write ``inblob`` between another process's
  write and its read of ``outblob`` (the race the generation counter exists to detect);
* TDX: ``rtmr3`` is a FIFO; each 48-byte write extends the fake's RTMR3
  (``SHA-384(RTMR3 || data)``), which the default TDX reports carry.

Reports are made by ``make_report(inblob, rtmr3) -> (outblob, auxblob)``; the default for
``tdx_guest`` is :func:`synthetic_tdx_quote` (the real layout, unsigned).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

ReportMaker = Callable[[bytes, bytes], tuple[bytes, bytes | None]]

_POLL_S = 0.0005
_INTEL_QE_VENDOR = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


def synthetic_tdx_quote(
    report_data: bytes, rtmr3: bytes, *, mrtd: bytes = b"\x11" * 48, debug: bool = False
) -> bytes:
    """A TDX quote (v4) in the real layout: header, TD report body with ``mrtd``, ``rtmr3``
    and ``report_data``, and empty certification data.  Its signature is zeros: it parses,
    it never verifies."""
    header = struct.pack("<HHI", 4, 2, 0x81) + bytes(4) + _INTEL_QE_VENDOR + bytes(20)
    body = bytearray(584)
    body[128:136] = (1 if debug else 0).to_bytes(8, "little")  # TD_ATTRIBUTES
    body[136:184] = mrtd
    body[472:520] = rtmr3
    body[520:584] = report_data.ljust(64, b"\0")
    qe_cert = bytes(384) + bytes(64) + struct.pack("<H", 0) + struct.pack("<HI", 5, 0)
    signature = bytes(64) + bytes(64) + struct.pack("<HI", 6, len(qe_cert)) + qe_cert
    return header + bytes(body) + struct.pack("<I", len(signature)) + signature


class _Entry:
    def __init__(self, path: Path, provider: str) -> None:
        self.path = path
        self.generation = 0
        self.inblob = b""
        self.report: tuple[int, bytes, bytes | None] | None = None
        self.served = -1  # the generation whose outblob went out
        self.served_aux = -1  # the generation whose auxblob went out
        for name in ("inblob", "outblob", *(["auxblob"] if provider == "sev_guest" else [])):
            os.mkfifo(path / name, 0o600)
        # Held open for reading, so a writer's open() never blocks and its bytes wait for us.
        self.inblob_fd = os.open(path / "inblob", os.O_RDONLY | os.O_NONBLOCK)
        # Written whole, last: an entry is complete once its provider and generation show.
        tmp = path / ".provider.tmp"
        tmp.write_text(provider + "\n")
        tmp.replace(path / "provider")
        self._write_generation()

    def _write_generation(self) -> None:
        tmp = self.path / ".generation.tmp"
        tmp.write_text(f"{self.generation}\n")
        tmp.replace(self.path / "generation")

    def take_writes(self) -> int:
        """Every write that arrived: each bumps the generation; the last one is the inblob."""
        taken = 0
        while True:
            try:
                data = os.read(self.inblob_fd, 4096)
            except BlockingIOError:
                data = b""
            if not data:
                break
            for at in range(0, len(data), 64):
                self.inblob = data[at : at + 64]
                self.generation += 1
                taken += 1
        if taken:
            self._write_generation()
        return taken

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.inblob_fd)


class FakeTsm:
    """configfs-tsm (and RTMR3) for ``root``; a context manager that runs the helper thread."""

    def __init__(
        self, root: Path, *, provider: str = "tdx_guest", make_report: ReportMaker | None = None
    ) -> None:
        if provider not in ("tdx_guest", "sev_guest"):
            raise ValueError(f"provider must be tdx_guest or sev_guest, got {provider!r}")
        self.root = Path(root)
        self.report_dir = self.root / "report"
        self.rtmr3_path = self.root / "rtmr3"
        self.provider = provider
        self.make_report = make_report or self._tdx_report
        self.rtmr3 = bytes(48)
        #: Writes a second writer makes before the next read of an outblob (then 0 again,
        #: unless ``interfere_always``).
        self.interfere = 0
        self.interfere_always = False
        self.outblob_reads = 0
        self.reports_made = 0
        self.extends = 0
        self._entries: dict[str, _Entry] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-tsm", daemon=True)
        self._lock = threading.Lock()
        self._rtmr_fd = -1

    def __enter__(self) -> FakeTsm:
        self.report_dir.mkdir(parents=True, exist_ok=True)
        if self.provider == "tdx_guest":
            os.mkfifo(self.rtmr3_path, 0o600)
            self._rtmr_fd = os.open(self.rtmr3_path, os.O_RDONLY | os.O_NONBLOCK)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for entry in self._entries.values():
            entry.close()
        if self._rtmr_fd >= 0:
            os.close(self._rtmr_fd)

    def entries(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def _tdx_report(self, inblob: bytes, rtmr3: bytes) -> tuple[bytes, bytes | None]:
        return synthetic_tdx_quote(inblob, rtmr3), None

    # -- the helper thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take_extends()
            self._populate()
            with self._lock:
                entries = list(self._entries.values())
            for entry in entries:
                entry.take_writes()
                self._serve(entry, "outblob")
                if self.provider == "sev_guest":
                    self._serve(entry, "auxblob")
            time.sleep(_POLL_S)

    def _take_extends(self) -> None:
        if self._rtmr_fd < 0:
            return
        while True:
            try:
                data = os.read(self._rtmr_fd, 4096)
            except BlockingIOError:
                return
            if not data:
                return
            for at in range(0, len(data) - len(data) % 48, 48):
                self.rtmr3 = hashlib.sha384(self.rtmr3 + data[at : at + 48]).digest()
                self.extends += 1

    def _populate(self) -> None:
        for path in self.report_dir.iterdir():
            if path.name in self._entries or not path.is_dir():
                continue
            entry = _Entry(path, self.provider)
            with self._lock:
                self._entries[path.name] = entry
        with self._lock:
            for name in [n for n, e in self._entries.items() if not e.path.exists()]:
                self._entries.pop(name).close()

    def _serve(self, entry: _Entry, name: str) -> None:
        # Each blob goes out once per generation, as the reader always writes inblob first.
        # A reader that took the blob but has not yet read EOF still holds the FIFO open, so
        # an open() succeeding here is no proof of a new read: serving it again would append
        # a second report to the first (seen on a loaded machine as "got 4736" bytes).
        if (entry.served if name == "outblob" else entry.served_aux) == entry.generation:
            return
        try:
            fd = os.open(entry.path / name, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                return  # nobody is reading it
            raise
        try:
            os.set_blocking(fd, True)
            entry.take_writes()
            if name == "outblob":
                self.outblob_reads += 1
                self._second_writer(entry)
            self._take_extends()
            entry.take_writes()
            outblob, auxblob = self._report(entry)
            if name == "outblob":
                entry.served = entry.generation
            else:
                entry.served_aux = entry.generation
            data = outblob if name == "outblob" else (auxblob or b"")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    def _second_writer(self, entry: _Entry) -> None:
        count = self.interfere
        if not self.interfere_always:
            self.interfere = 0
        for _ in range(count):
            fd = os.open(entry.path / "inblob", os.O_WRONLY)
            try:
                os.write(fd, os.urandom(64))
            finally:
                os.close(fd)

    def _report(self, entry: _Entry) -> tuple[bytes, bytes | None]:
        cached = entry.report
        if cached is None or cached[0] != entry.generation:
            outblob, auxblob = self.make_report(entry.inblob, self.rtmr3)
            self.reports_made += 1
            entry.report = cached = (entry.generation, outblob, auxblob)
        return cached[1], cached[2]


def is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(path.stat().st_mode)
