"""Segments: the shared memory one channel lives in.

A segment is made by one side (:meth:`Segment.create`) and handed to the other as a file
descriptor over a Unix socket (:mod:`sealserve.ipc._handshake`), which maps it with
:meth:`Segment.open_fd`.  Three kinds of memory back it:

``memfd``      an anonymous memory file (the default): no name in any file system, mode 0600,
               sealed against shrinking and growing so the peer cannot truncate it under us
               (which would turn our next access into SIGBUS);
``shm``        the fallback where ``memfd_create`` is missing or forbidden: a file in
               ``/dev/shm`` created with ``O_EXCL`` and mode 0600, unlinked as soon as it is
               mapped (the descriptor, not the name, is what travels to the peer);
``anonymous``  an anonymous shared mapping, for the in-process backend: nothing to hand over,
               nothing a unit test's fence refuses.

Pages are committed lazily, so a large arena costs address space, not memory, until it is
written; :meth:`Segment.trim` gives the pages of a large reclaimed message back.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import mmap
import os
import secrets
import stat
from typing import Literal

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.errors import IPCError, SegmentError
from sealserve.ipc import _sys
from sealserve.ipc._layout import Geometry, read_geometry, write_header

__all__ = ["Memory", "Segment", "SegmentState"]

_log = get_logger(__name__)

Memory = Literal["auto", "memfd", "shm", "anonymous"]
_MEMORY_KINDS = ("auto", "memfd", "shm", "anonymous")
_SHM_DIR = "/dev/shm"  # noqa: S108 - the POSIX shared-memory directory, by definition
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+
_SEALS = (
    getattr(fcntl, "F_SEAL_SHRINK", 0)
    | getattr(fcntl, "F_SEAL_GROW", 0)
    | getattr(fcntl, "F_SEAL_SEAL", 0)
)


class SegmentState(enum.Enum):
    OPENED = "opened"
    CLOSED = "closed"


class Segment:
    """A mapped channel segment: header, control words, descriptor ring and arena.

    ``words`` views the segment as 64-bit words and ``bytes`` as bytes; ``arena`` is the
    payload area.  Close it promptly (or use ``with``): the mapping is released as soon as
    no sample view refers to it any more.
    """

    __slots__ = (
        "_fd",
        "_mmap",
        "_mv",
        "address",
        "arena",
        "arena_address",
        "bytes",
        "geometry",
        "kind",
        "state",
        "words",
    )

    def __init__(self, *, mapping: mmap.mmap, fd: int | None, kind: str, geometry: Geometry):
        self._mmap = mapping
        self._fd = fd
        self.kind = kind
        self.geometry = geometry
        self._mv = memoryview(mapping)
        self.words = self._mv.cast("Q")
        self.bytes = self._mv
        self.arena = self._mv[geometry.arena_offset : geometry.arena_offset + geometry.arena_size]
        self.address = _sys.address_of(mapping)
        self.arena_address = self.address + geometry.arena_offset
        self.state = SegmentState.OPENED

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        capacity: int,
        arena_bytes: int,
        max_subscribers: int,
        memory: Memory = "auto",
        clock: Clock = SYSTEM_CLOCK,
    ) -> Segment:
        """Make, map and initialise a fresh segment."""
        if memory not in _MEMORY_KINDS:
            raise ValueError(f"memory must be one of {', '.join(_MEMORY_KINDS)}, got {memory!r}")
        geometry = Geometry.plan(
            capacity=capacity, arena_bytes=arena_bytes, max_subscribers=max_subscribers
        )
        size = geometry.segment_size
        fd: int | None = None
        kind: str = memory
        if memory == "anonymous":
            mapping = mmap.mmap(-1, size)
        else:
            fd, kind = _make_file(size, memory)
            try:
                mapping = mmap.mmap(fd, size)
            except (OSError, ValueError) as exc:
                os.close(fd)
                raise IPCError(f"could not map a {size}-byte segment: {exc}") from exc
        seg = cls(mapping=mapping, fd=fd, kind=kind, geometry=geometry)
        write_header(seg.bytes, geometry, created_ns=int(clock.time() * 1e9))
        _log.event("ipc.segment.created", kind=kind, size=size, capacity=capacity)
        return seg

    @classmethod
    def open_fd(cls, fd: int) -> Segment:
        """Map a segment received from a peer; takes ownership of ``fd`` (closed on error).

        Raises :class:`SegmentError` for a file that is not a sealserve segment of this
        version, has a corrupt header, or could be shrunk by its creator.
        """
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SegmentError("segment descriptor is not a regular memory file")
            if info.st_mode & 0o077:
                raise SegmentError(
                    f"segment has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600"
                )
            _check_sealed(fd)
            mapping = mmap.mmap(fd, info.st_size)
        except SegmentError:
            os.close(fd)
            raise
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise SegmentError(f"could not map the peer's segment: {exc}") from exc
        view = memoryview(mapping)
        try:
            geometry = read_geometry(view, mapped_size=info.st_size)
        except BaseException:
            view.release()  # the traceback keeps the frame alive; the export must go now
            with contextlib.suppress(BufferError):
                mapping.close()
            os.close(fd)
            raise
        view.release()
        return cls(mapping=mapping, fd=fd, kind="fd", geometry=geometry)

    def fileno(self) -> int:
        """The descriptor to hand to a peer; an anonymous segment has none."""
        if self.state is SegmentState.CLOSED:
            raise IPCError("segment is closed")
        if self._fd is None:
            raise IPCError("an anonymous (in-process) segment cannot be shared with a process")
        return self._fd

    def prefault(self) -> None:
        """Map every page of the segment into this process now (and commit its memory).

        A fresh mapping pays a page fault on the first touch of each page, in each process
        that maps it; a latency-critical channel can pay them all up front instead, on both
        sides (as a ring mapped with ``MAP_POPULATE`` would).  Uses ``MADV_POPULATE_WRITE``
        (Linux 5.14+); elsewhere it reads one byte per page, which never changes a byte a
        peer may be writing.
        """
        if self.state is SegmentState.CLOSED:
            raise IPCError("segment is closed")
        try:
            self._mmap.madvise(_MADV_POPULATE_WRITE)
        except (OSError, ValueError):
            view = self._mv
            for at in range(0, len(view), mmap.PAGESIZE):
                _ = view[at]

    def trim(self, offset: int, length: int) -> None:
        """Give back the whole pages of ``arena[offset:offset + length]`` (they read as zero)."""
        start = (offset + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        end = (offset + length) // mmap.PAGESIZE * mmap.PAGESIZE
        if end <= start or self.state is SegmentState.CLOSED:
            return
        advice = getattr(mmap, "MADV_REMOVE", None)
        if advice is None:  # pragma: no cover - not Linux
            return
        with contextlib.suppress(OSError):
            self._mmap.madvise(advice, self.geometry.arena_offset + start, end - start)

    def close(self) -> None:
        """Unmap (now, or when the last sample view goes) and close the descriptor."""
        if self.state is SegmentState.CLOSED:
            return
        self.state = SegmentState.CLOSED
        for view in (self.arena, self.words, self._mv):
            with contextlib.suppress(BufferError):
                view.release()
        try:
            self._mmap.close()
        except BufferError:
            # A sample view is still alive; it keeps the mapping, which goes with it.
            _log.event("ipc.segment.unmap_deferred", kind=self.kind)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        g = self.geometry
        return (
            f"Segment(kind={self.kind!r}, state={self.state.value!r}, capacity={g.capacity}, "
            f"arena_size={g.arena_size})"
        )


def _make_file(size: int, memory: Memory) -> tuple[int, str]:
    if memory in ("auto", "memfd"):
        try:
            fd = _sys.memfd_create("sealserve-ipc")
        except OSError as exc:
            if memory == "memfd":
                raise IPCError(f"memfd_create failed: {exc}") from exc
            _log.event("ipc.segment.memfd_unavailable", error=str(exc))
        else:
            try:
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, size)
                if _SEALS:
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            except OSError as exc:
                os.close(fd)
                raise IPCError(f"could not size a {size}-byte memfd segment: {exc}") from exc
            return fd, "memfd"
    name = f"{_SHM_DIR}/sealserve-ipc-{secrets.token_hex(12)}"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600)
    except OSError as exc:
        raise IPCError(f"could not create a shared-memory file in {_SHM_DIR}: {exc}") from exc
    try:
        # The descriptor travels to the peer; the name is not needed past this point.
        os.unlink(name)
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise IPCError(f"could not size a {size}-byte /dev/shm segment: {exc}") from exc
    return fd, "shm"


def _check_sealed(fd: int) -> None:
    """A memfd must be sealed against shrinking; a /dev/shm file cannot be, and is accepted."""
    get_seals = getattr(fcntl, "F_GET_SEALS", None)
    shrink = getattr(fcntl, "F_SEAL_SHRINK", 0)
    if get_seals is None or not shrink:  # pragma: no cover - not Linux
        return
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # pragma: no cover - no /proc
        target = ""
    if not target.startswith("/memfd:"):
        return  # the /dev/shm fallback: tmpfs files outside memfd cannot carry seals
    try:
        seals = fcntl.fcntl(fd, get_seals)
    except OSError:  # pragma: no cover - a memfd always answers
        seals = 0
    if not seals & shrink:
        raise SegmentError(
            "peer sent a memfd segment that is not sealed against shrinking; refusing a "
            "segment its creator could truncate under us"
        )
