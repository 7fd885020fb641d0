"""The few system calls the data plane needs: futex, a memory fence, memfd, pidfd, cache size.

This is the raw layer: addresses are plain integers and nothing here validates what the caller
passes.  Everything above it works on :class:`~sealserve.ipc._segment.Segment` objects.

Memory ordering.  Each shared word has exactly one writer, so the ring needs no atomic
read-modify-write; it needs ordering.  On x86-64 (TSO) stores are seen in program order and
loads are not reordered with loads, so publication (data, then descriptor, then ``head``) and
consumption need no barrier; the one reordering TSO allows, a later load passing an earlier
store, matters only in the sleep/wake handshake ("I am going to sleep" / "I published"), where
:func:`full_fence` is called.  On x86-64 the fence is a locked instruction, obtained cheaply by
acquiring and releasing a private :class:`threading.Lock` (CPython's lock is a
``lock cmpxchg``).  Elsewhere (aarch64) :func:`full_fence`, :func:`release_fence` and
:func:`acquire_fence` call ``__atomic_fetch_add_8`` from libatomic, a sequentially consistent
read-modify-write; where libatomic is missing the waits still end, because every blocking wait
is sliced (see :mod:`sealserve.ipc._notify`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import select
import threading
from collections.abc import Callable
from pathlib import Path

from sealserve._log import get_logger

__all__ = [
    "FENCE_PAIR",
    "FUTEX_SUPPORTED",
    "NEEDS_BARRIERS",
    "acquire_fence",
    "address_of",
    "consumer_cache_bytes",
    "current_cpu",
    "full_fence",
    "futex_wait",
    "futex_wake",
    "memfd_create",
    "pidfd_open",
    "poll_readable",
    "release_fence",
]

_log = get_logger(__name__)

_MACHINE = platform.machine().lower()
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(_MACHINE)
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_syscall() -> Callable[..., int] | None:
    if _SYS_FUTEX is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to speak of
        return None
    fn = libc.syscall
    fn.restype = ctypes.c_long
    fn.argtypes = [
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint,
    ]
    return fn


_syscall = _load_syscall()

#: Whether this machine has the futex system call at a known number (Linux x86-64, aarch64).
FUTEX_SUPPORTED = _syscall is not None


def futex_wait(address: int, expected: int, timeout_s: float | None) -> bool:
    """Sleep while the 32-bit word at ``address`` still holds ``expected``.

    Returns ``True`` when woken (or when the word had already changed), ``False`` when the
    timeout passed.  Spurious returns are possible; callers re-check their condition.  Without
    the futex system call the wait degrades to a short sleep.
    """
    if _syscall is None:  # pragma: no cover - other architectures
        os.sched_yield()
        if timeout_s:
            threading.Event().wait(min(timeout_s, 0.001))
        return True
    ts_ptr = None
    if timeout_s is not None:
        secs = max(timeout_s, 0.0)
        ts = _Timespec(int(secs), int((secs - int(secs)) * 1e9))
        ts_ptr = ctypes.addressof(ts)
    rc = _syscall(_SYS_FUTEX, address, _FUTEX_WAIT, expected & 0xFFFFFFFF, ts_ptr, None, 0)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait failed: {os.strerror(err)}")  # pragma: no cover


def futex_wake(address: int, count: int = _INT_MAX) -> int:
    """Wake up to ``count`` waiters on the word at ``address``; returns how many woke."""
    if _syscall is None:  # pragma: no cover - other architectures
        return 0
    rc = _syscall(_SYS_FUTEX, address, _FUTEX_WAKE, count, None, None, 0)
    if rc < 0:  # pragma: no cover - EFAULT on a bad address is a bug above us
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake failed: {os.strerror(err)}")
    return int(rc)


def _load_getcpu() -> Callable[[], int] | None:
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):  # pragma: no cover - no glibc
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return fn


_getcpu = _load_getcpu()


def current_cpu() -> int:
    """The CPU this thread runs on now (``-1`` where the system cannot say)."""
    if _getcpu is None:  # pragma: no cover - no glibc
        return -1
    return int(_getcpu())


# -- fences ------------------------------------------------------------------------------------

_fence_lock = threading.Lock()


def _x86_full_fence() -> None:
    # A locked instruction is a full barrier on x86-64; CPython's lock is one.
    _fence_lock.acquire()
    _fence_lock.release()


def _noop() -> None:
    return None


def _load_atomic_fence() -> Callable[[], None] | None:
    name = ctypes.util.find_library("atomic")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        fetch_add = lib.__atomic_fetch_add_8
    except (OSError, AttributeError):
        return None
    fetch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
    fetch_add.restype = ctypes.c_uint64
    cell = ctypes.c_uint64(0)
    where = ctypes.addressof(cell)
    seq_cst = 5

    def fence() -> None:
        fetch_add(where, 0, seq_cst)

    fence.cell = cell  # type: ignore[attr-defined]  # keep the word alive with the function
    return fence


#: Whether publication and consumption need explicit barriers (everything but x86-64).
NEEDS_BARRIERS = _MACHINE not in ("x86_64", "amd64")

#: Two callables whose calls in turn are a full fence, for hot paths that cannot afford a
#: Python-level call: on x86-64 the acquire and release of a private lock (C calls),
#: elsewhere ``(full_fence, no-op)``.
FENCE_PAIR: tuple[Callable[[], object], Callable[[], object]]

if not NEEDS_BARRIERS:
    full_fence: Callable[[], None] = _x86_full_fence
    release_fence: Callable[[], None] = _noop
    acquire_fence: Callable[[], None] = _noop
    FENCE_PAIR = (_fence_lock.acquire, _fence_lock.release)
else:  # pragma: no cover - exercised on aarch64 only
    _atomic = _load_atomic_fence()
    if _atomic is None:
        _log.event("ipc.no_fence", machine=_MACHINE)
        full_fence = release_fence = acquire_fence = os.sched_yield
    else:
        full_fence = release_fence = acquire_fence = _atomic
    FENCE_PAIR = (full_fence, _noop)


# -- addresses, files, processes ----------------------------------------------------------------


def address_of(buffer: object) -> int:
    """The address of the first byte of a writable buffer (an ``mmap`` or ``bytearray``)."""
    holder = ctypes.c_char.from_buffer(buffer)  # type: ignore[arg-type]
    address = ctypes.addressof(holder)
    del holder
    return address


def memfd_create(name: str) -> int:
    """An anonymous memory file that can be sealed against shrinking; raises ``OSError``."""
    if not hasattr(os, "memfd_create"):  # pragma: no cover - not Linux
        raise OSError(errno.ENOSYS, "memfd_create is not available on this system")
    flags = os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0)
    return os.memfd_create(name, flags)


def pidfd_open(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits, or ``None`` where unsupported."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:  # pragma: no cover - Python or kernel without pidfd
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def poll_readable(fds: list[int]) -> list[int]:
    """Those of ``fds`` that are readable or hung up now (never blocks)."""
    if not fds:
        return []
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [fd for fd, _ in poller.poll(0)]


def consumer_cache_bytes(default: int = 1 << 20) -> int:
    """The size of this CPU's largest private cache (L2 on most machines), from sysfs."""
    best = 0
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        entries = sorted(root.glob("index*"))
        for entry in entries:
            level = int((entry / "level").read_text().strip())
            kind = (entry / "type").read_text().strip()
            shared = (entry / "shared_cpu_list").read_text().strip()
            if level > 2 or kind == "Instruction" or "," in shared or "-" in shared:
                continue
            best = max(best, _parse_size((entry / "size").read_text().strip()))
    except (OSError, ValueError):
        return default
    return best or default


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)
