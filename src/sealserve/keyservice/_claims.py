"""Group commit of claims: one transaction (one fsync) for every claim waiting.

A claim records a single-use nonce as used, with the audit entries of the request that used
it (a release's rows), and must be durable before the request is answered: a release's keys
do not leave before their audit rows and their used nonce are on disk.  Committing each claim
on its own costs one fsync per release; this writer commits whatever claims queued up while
the previous commit ran, in one transaction, then answers all of them.  A failed commit fails
every claim of its batch (none of those requests is answered with keys).

Now and then a batch also purges the used nonces that expired more than ``purge_grace_s``
ago: an expired nonce is refused by its expiry anyway, and the grace covers the clock
difference between the processes that share the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve.keyservice._records import Claim

__all__ = ["ClaimWriter", "CommitFn"]

#: Commits claims in one transaction, off the event loop: ``(claims, purge_before)`` -> per
#: claim, whether its nonce was new.
CommitFn = Callable[[Sequence[Claim], float | None], Awaitable[list[bool]]]


class ClaimWriter:
    """``await writer.commit(claim)`` returns once the claim is committed: true when its nonce
    was new (and its entries were written), false when the nonce was used already."""

    def __init__(
        self,
        commit: CommitFn,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_batch: int = 512,
        purge_every_s: float = 60.0,
        purge_grace_s: float = 120.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if not purge_every_s > 0:
            raise ValueError(f"purge_every_s must be > 0, got {purge_every_s!r}")
        if purge_grace_s < 0:
            raise ValueError(f"purge_grace_s must be >= 0, got {purge_grace_s!r}")
        self._commit = commit
        self._clock = clock
        self._max_batch = max_batch
        self._purge_every = float(purge_every_s)
        self._purge_grace = float(purge_grace_s)
        self._next_purge = clock.monotonic() + self._purge_every
        self._pending: list[tuple[Claim, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0

    async def commit(self, claim: Claim) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((claim, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    def _purge_before(self) -> float | None:
        if self._clock.monotonic() < self._next_purge:
            return None
        self._next_purge = self._clock.monotonic() + self._purge_every
        return self._clock.time() - self._purge_grace

    async def _flush(self) -> None:
        # Bounded: each pass takes what is pending; the loop ends when nothing is left.
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                fresh = await self._commit([claim for claim, _ in batch], self._purge_before())
            except Exception as exc:  # every waiter of the batch learns it failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                self.batches += 1
                for (_, future), new in zip(batch, fresh, strict=True):
                    if not future.done():
                        future.set_result(new)
