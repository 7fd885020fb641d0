"""The memory an instance uses: its host's and its runtime's resident pages, from ``/proc``.

The local platform has no sandbox that would hold an instance to its size, so it measures
what each instance uses and reports it beside the size it bills (``sealserve platform
status``, ``sealserve_platform_memory_bytes``): that is how the reserve for the host and the
runtime (:data:`~sealserve.config.RUNTIME_RESERVE_MB`) is checked in operation.

The host and its runtime map the same shared-memory segments (the ipc channel), so a pair's
memory is each process's private pages (anonymous and file-backed: ``RssAnon`` +
``RssFile``) plus their shared memory once (the larger ``RssShmem``).  Summing ``VmRSS``
would count a sealed model on its way to the runtime twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ProcessMemory", "pair_resident_mb", "process_memory"]

_KB_PER_MB = 1024.0
_PROC = Path("/proc")


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessMemory:
    """One process's resident memory (MB): private pages, and shared memory it maps."""

    private_mb: float
    shared_mb: float


def process_memory(pid: int, *, proc: Path = _PROC) -> ProcessMemory | None:
    """``pid``'s resident memory from ``/proc/<pid>/status``; ``None`` if it cannot be read
    (the process is gone, or there is no ``/proc``)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
        raise ValueError(f"pid must be an int >= 1, got {pid!r}")
    try:
        text = (proc / str(pid) / "status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            parts = value.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) / _KB_PER_MB
    if "RssAnon" not in fields:
        return None  # a kernel thread, a zombie, or an older kernel
    return ProcessMemory(
        private_mb=fields["RssAnon"] + fields.get("RssFile", 0.0),
        shared_mb=fields.get("RssShmem", 0.0),
    )


def pair_resident_mb(pids: Iterable[int], *, proc: Path = _PROC) -> float | None:
    """The resident memory of processes that share memory with each other (an instance's
    host and runtime), in MB; ``None`` if any of them cannot be read."""
    private = shared = 0.0
    seen = False
    for pid in pids:
        memory = process_memory(pid, proc=proc)
        if memory is None:
            return None
        private += memory.private_mb
        shared = max(shared, memory.shared_mb)
        seen = True
    return private + shared if seen else None
