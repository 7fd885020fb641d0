"""The ``tsm`` backend: TDX quotes and SEV-SNP reports through Linux's configfs-tsm.

The kernel's report interface (Documentation/ABI/testing/configfs-tsm-report) is a directory
per requester under ``/sys/kernel/config/tsm/report/``: ``mkdir`` creates one, with the
attributes ``inblob`` (write: up to 64 bytes of report_data), ``outblob`` (read: the report,
generated on the first read after a write), ``auxblob`` (read: supplemental data, the SNP
certificate table when the host supplies one), ``provider`` (``tdx_guest`` or ``sev_guest``)
and ``generation`` (incremented by every write).  :class:`TsmReports` follows the documented
protocol: read ``generation``, write ``inblob``, read ``outblob`` (and ``auxblob``), read
``generation`` again; any count but one more means another writer used the entry in between,
and the attempt is retried (bounded), never returned.  Each process uses its own entry, as the
documentation recommends, and removes it when closed.

:class:`Rtmr` extends TDX's RTMR3 through the kernel's measurement-register interface
(``/sys/class/misc/tdx_guest/measurements/rtmr3:sha384``, Linux 6.16: write a 48-byte digest,
read the value).  :func:`snp_derived_key` asks the SEV-SNP firmware for a key derived from the
VCEK and the guest's launch measurement and policy (``SNP_GET_DERIVED_KEY`` on
``/dev/sev-guest``): the SNP sealing root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Final

from sealserve._log import get_logger
from sealserve.errors import TeeError

__all__ = [
    "PROVIDERS",
    "Rtmr",
    "TsmReports",
    "snp_derived_key",
]

#: The providers of configfs-tsm reports sealserve understands.
PROVIDERS: Final = frozenset({"tdx_guest", "sev_guest"})
DEFAULT_REPORT_DIR: Final = Path("/sys/kernel/config/tsm/report")
DEFAULT_RTMR3: Final = Path("/sys/class/misc/tdx_guest/measurements/rtmr3:sha384")
_INBLOB_MAX: Final = 64
_OUTBLOB_MAX: Final = 16 << 20
_ATTEMPTS: Final = 8
#: configfs populates a new entry's attributes before ``mkdir`` returns; the bounded wait
#: costs nothing there, and lets a test's fake (a plain directory tree) populate its own.
_POPULATE_TIMEOUT_S: Final = 5.0

_log = get_logger(__name__)


class TsmReports:
    """Reports from configfs-tsm through an entry of this process's own; a context manager."""

    def __init__(
        self, *, report_dir: str | os.PathLike[str] = DEFAULT_REPORT_DIR, attempts: int = _ATTEMPTS
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts!r}")
        self._report_dir = Path(report_dir)
        self._attempts = attempts
        self._entry: Path | None = None
        self._provider = ""

    @property
    def provider(self) -> str:
        """``tdx_guest`` or ``sev_guest`` (after :meth:`open`)."""
        return self._provider

    def open(self) -> TsmReports:
        if self._entry is not None:
            raise TeeError("the configfs-tsm entry is open already")
        if not self._report_dir.is_dir():
            raise TeeError(
                f"no configfs-tsm report interface at '{self._report_dir}': not a TDX or "
                "SEV-SNP guest, or configfs is not mounted (mount -t configfs none "
                "/sys/kernel/config), or the kernel is older than 6.7"
            )
        entry = self._report_dir / f"sealserve-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            entry.mkdir()
        except OSError as exc:
            raise TeeError(f"cannot create the configfs-tsm entry '{entry}': {exc}") from exc
        self._entry = entry
        try:
            provider = self._wait_for(entry / "provider").read_text().strip()
            if provider not in PROVIDERS:
                raise TeeError(
                    f"configfs-tsm provider {provider!r} is not one of {sorted(PROVIDERS)}"
                )
            self._wait_for(entry / "generation")
        except BaseException:
            self.close()
            raise
        self._provider = provider
        _log.event("tsm.opened", provider=provider)
        return self

    def close(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            with contextlib.suppress(OSError):
                entry.rmdir()

    def __enter__(self) -> TsmReports:
        return self.open() if self._entry is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def report(self, inblob: bytes) -> tuple[bytes, bytes | None]:
        """The report (``outblob``) over ``inblob`` and the ``auxblob`` (None when empty).

        :class:`~sealserve.errors.TeeError` when every attempt met another writer, or the
        interface fails.
        """
        data = bytes(inblob)
        if not 0 < len(data) <= _INBLOB_MAX:
            raise ValueError(f"inblob must be 1 to {_INBLOB_MAX} bytes, got {len(data)}")
        entry = self._entry
        if entry is None:
            raise TeeError("the configfs-tsm entry is not open")
        for attempt in range(1, self._attempts + 1):
            try:
                before = _read_generation(entry)
                _write(entry / "inblob", data)
                outblob = _read(entry / "outblob")
                auxblob = _read_optional(entry / "auxblob")
                after = _read_generation(entry)
            except OSError as exc:
                raise TeeError(f"the configfs-tsm report failed: {exc}") from exc
            if after == before + 1 and outblob:
                return outblob, auxblob or None
            _log.event(
                "tsm.conflict",
                level=logging.WARNING,
                attempt=attempt,
                generations=after - before,
            )
        raise TeeError(
            f"another writer kept using the configfs-tsm entry: {self._attempts} attempts "
            "saw other writes between inblob and outblob"
        )

    def _wait_for(self, path: Path) -> Path:
        deadline = time.monotonic() + _POPULATE_TIMEOUT_S
        while not path.exists():
            if time.monotonic() > deadline:
                raise TeeError(f"the configfs-tsm entry has no '{path.name}' attribute")
            time.sleep(0.005)
        return path


class Rtmr:
    """TDX's RTMR3 through the kernel's measurement-register interface."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_RTMR3) -> None:
        self._path = Path(path)

    def read(self) -> bytes:
        try:
            value = self._path.read_bytes()
        except OSError as exc:
            raise TeeError(
                f"cannot read RTMR3 at '{self._path}': {exc.strerror or exc} (Linux 6.16 or "
                "later exposes it; older kernels cannot extend RTMRs from user space)"
            ) from exc
        if len(value) != 48:
            raise TeeError(f"'{self._path}' holds {len(value)} bytes, not an RTMR (48)")
        return value

    def extend(self, digest: bytes) -> None:
        """Extend RTMR3 with a 48-byte SHA-384 digest."""
        if len(digest) != 48:
            raise ValueError(f"an RTMR3 extension is 48 bytes, got {len(digest)}")
        try:
            _write(self._path, bytes(digest))
        except OSError as exc:
            raise TeeError(f"cannot extend RTMR3 at '{self._path}': {exc}") from exc


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(errno.EIO, f"short write to {path.name}")


def _read(path: Path) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(_OUTBLOB_MAX + 1)
    if len(data) > _OUTBLOB_MAX:
        raise OSError(errno.EFBIG, f"{path.name} is larger than {_OUTBLOB_MAX} bytes")
    return data


def _read_optional(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENXIO, errno.EOPNOTSUPP):
            return b""
        raise


def _read_generation(entry: Path) -> int:
    text = (entry / "generation").read_text().strip()
    try:
        return int(text)
    except ValueError:
        raise OSError(errno.EIO, f"generation holds {text[:20]!r}, not a number") from None


# -- SEV-SNP derived keys (the SNP sealing root) --------------------------------------------


class _DerivedKeyRequest(ctypes.Structure):
    _fields_ = (
        ("root_key_select", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint32),
        ("guest_field_select", ctypes.c_uint64),
        ("vmpl", ctypes.c_uint32),
        ("guest_svn", ctypes.c_uint32),
        ("tcb_version", ctypes.c_uint64),
    )


class _DerivedKeyResponse(ctypes.Structure):
    _fields_ = (("data", ctypes.c_uint8 * 64),)


class _GuestRequest(ctypes.Structure):
    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


def _iowr(kind: int, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | number


#: ``SNP_GET_DERIVED_KEY``: _IOWR('S', 0x1, struct snp_guest_request_ioctl).
_SNP_GET_DERIVED_KEY: Final = _iowr(ord("S"), 0x1, ctypes.sizeof(_GuestRequest))
#: GUEST_FIELD_SELECT bits: guest policy (0) and launch measurement (3).
_FIELD_POLICY: Final = 1 << 0
_FIELD_MEASUREMENT: Final = 1 << 3


def snp_derived_key(device: str | os.PathLike[str] = "/dev/sev-guest") -> bytes:
    """A 32-byte key the SEV-SNP firmware derives from the chip's VCEK, the guest's policy and
    its launch measurement (VMPL 0): the same on every boot of the same VM image on the same
    chip, and unknown to the host."""
    request = _DerivedKeyRequest(
        root_key_select=0,  # the VCEK, not the VMRK
        guest_field_select=_FIELD_POLICY | _FIELD_MEASUREMENT,
        vmpl=0,
        guest_svn=0,
        tcb_version=0,
    )
    response = _DerivedKeyResponse()
    guest = _GuestRequest(
        msg_version=1,
        req_data=ctypes.addressof(request),
        resp_data=ctypes.addressof(response),
    )
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise TeeError(f"cannot open '{device}' for an SNP derived key: {exc}") from exc
    try:
        fcntl.ioctl(fd, _SNP_GET_DERIVED_KEY, guest)
    except OSError as exc:
        raise TeeError(
            f"SNP_GET_DERIVED_KEY failed: {exc} (firmware error {guest.exitinfo2:#x})"
        ) from exc
    finally:
        os.close(fd)
    # MSG_KEY_RSP: status (4 bytes), reserved (28), derived key (32).
    raw = bytes(response.data)
    status = int.from_bytes(raw[:4], "little")
    if status != 0:
        raise TeeError(f"the SNP firmware refused a derived key (status {status:#x})")
    return raw[32:64]
