"""Group commit of the release audit: one transaction (one fsync) for every release waiting.

A release's audit entries must be durable before its keys leave the service.  Committing each
release on its own costs one fsync per release; under concurrency this writer commits whatever
releases queued up while the previous commit ran, in one transaction, and then answers all of
them.  A failed commit fails every release of that batch (none of them is answered with keys).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from sealserve.keyservice._store import AuditEntry

__all__ = ["AuditWriter"]

#: Writes entries in one transaction, off the event loop.
CommitFn = Callable[[Sequence[AuditEntry]], Awaitable[None]]


class AuditWriter:
    """``await writer.append(entries)`` returns once ``entries`` are committed."""

    def __init__(self, commit: CommitFn, *, max_batch: int = 512) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self._commit = commit
        self._max_batch = max_batch
        self._pending: list[tuple[Sequence[AuditEntry], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0

    async def append(self, entries: Sequence[AuditEntry]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entries, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        # Bounded: each pass takes what is pending; the loop ends when nothing is left.
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._commit([e for entries, _ in batch for e in entries])
            except Exception as exc:  # every waiter of the batch learns it failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                self.batches += 1
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
