"""Group commit of claims: batches, per-claim answers, failures, purges."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sealserve._clock import ManualClock
from sealserve.errors import KeyServiceError
from sealserve.keyservice._claims import ClaimWriter
from sealserve.keyservice._records import Claim


class FakeDatabase:
    """The real CommitFn contract over a set of used nonces; commits wait on a gate."""

    def __init__(self) -> None:
        self.used: set[bytes] = set()
        self.batches: list[list[bytes]] = []
        self.purges: list[float | None] = []
        self.gate = asyncio.Event()
        self.fail = False

    async def commit(self, claims: Sequence[Claim], purge_before: float | None) -> list[bool]:
        await self.gate.wait()
        self.purges.append(purge_before)
        if self.fail:
            raise KeyServiceError("disk full")
        self.batches.append([c.nonce for c in claims])
        fresh = []
        for claim in claims:
            fresh.append(claim.nonce not in self.used)
            self.used.add(claim.nonce)
        return fresh


def test_claims_waiting_during_a_commit_share_the_next_one() -> None:
    async def main() -> None:
        db = FakeDatabase()
        writer = ClaimWriter(db.commit, clock=ManualClock())
        first = asyncio.ensure_future(writer.commit(Claim(nonce=b"a", expires_at=1.0)))
        await asyncio.sleep(0)  # the first commit starts and waits on the gate
        rest = [
            asyncio.ensure_future(writer.commit(Claim(nonce=n, expires_at=1.0)))
            for n in (b"b", b"c", b"b")
        ]
        db.gate.set()
        assert await first is True
        assert [await f for f in rest] == [True, True, False]
        assert db.batches == [[b"a"], [b"b", b"c", b"b"]]
        assert writer.batches == 2

    asyncio.run(main())


def test_a_failed_commit_fails_every_claim_of_its_batch() -> None:
    async def main() -> None:
        db = FakeDatabase()
        db.fail = True
        db.gate.set()
        writer = ClaimWriter(db.commit, clock=ManualClock())
        results = await asyncio.gather(
            writer.commit(Claim(nonce=b"a", expires_at=1.0)),
            writer.commit(Claim(nonce=b"b", expires_at=1.0)),
            return_exceptions=True,
        )
        assert all(isinstance(r, KeyServiceError) for r in results)
        db.fail = False
        assert await writer.commit(Claim(nonce=b"a", expires_at=1.0)) is True

    asyncio.run(main())


def test_purges_ride_along_now_and_then() -> None:
    async def main() -> None:
        clock = ManualClock(start=1000.0)
        db = FakeDatabase()
        db.gate.set()
        writer = ClaimWriter(db.commit, clock=clock, purge_every_s=60, purge_grace_s=120)
        await writer.commit(Claim(nonce=b"a", expires_at=1.0))
        clock.advance(61)
        await writer.commit(Claim(nonce=b"b", expires_at=1.0))
        await writer.commit(Claim(nonce=b"c", expires_at=1.0))
        assert db.purges == [None, clock.time() - 120, None]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"max_batch": 0}, "max_batch"), ({"purge_every_s": 0}, "purge_every_s"),
     ({"purge_grace_s": -1}, "purge_grace_s")],
)  # fmt: skip
def test_writer_validates(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ClaimWriter(FakeDatabase().commit, **kwargs)  # type: ignore[arg-type]
