"""Ring invariants under random interleavings of sends, loans, receives, releases and churn.

A hypothesis state machine drives one publisher and up to three subscribers on an in-process
channel (the same ring code as shared memory) with a small ring and arena, so that every
path is taken often: full rings, out-of-order commits of loans, discards, out-of-order
releases, subscribers leaving while holding samples and new ones attaching.  After every
step:

* each subscriber has received exactly the messages published since it attached, in
  sequence order, with their bytes intact;
* every sample still held reads exactly what was written (no slot was reused under it);
* the ring never has more descriptors in flight than its capacity, nor more arena in use
  than the arena;
* a send or loan is refused only when the ring really is full: every descriptor is taken by
  a message some subscriber still holds (or an open loan), or no gap of the arena can hold
  it (``k`` live allocations leave at most ``k + 1`` gaps, so one of them has at least
  ``free / (k + 1)`` bytes; an allocator that uses free space wherever it is never refuses
  below that);
* once everything is released and reclaimed, nothing is in flight and no arena is in use.
"""

from __future__ import annotations

import dataclasses

from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from sealserve.errors import BackpressureTimeout
from sealserve.ipc import Channel, ChannelOptions, Loan, Sample, Subscriber, _core
from sealserve.ipc._ring import footprint

OPTS = ChannelOptions(capacity=8, arena_bytes=16 << 10, max_subscribers=3, memory="anonymous")
SIZES = st.integers(min_value=0, max_value=6000)


def _content(token: int, size: int) -> bytes:
    pattern = token.to_bytes(4, "little") + bytes([token % 251])
    return (pattern * (size // len(pattern) + 1))[:size]


@dataclasses.dataclass
class _Message:
    seq: int
    content: bytes
    footprint: int  # arena bytes it occupies (a loan keeps its full size when committed short)


@dataclasses.dataclass
class _Sub:
    sub: Subscriber
    first: int  # index into published of the first message it receives
    next_index: int  # index into published of the next message it should receive
    held: list[tuple[Sample, int]] = dataclasses.field(default_factory=list)  # (sample, index)


class RingMachine(RuleBasedStateMachine):
    loans = Bundle("loans")

    def __init__(self) -> None:
        super().__init__()
        self.channel = Channel.create(OPTS)
        self.pub = self.channel.publisher()
        self.subs: list[_Sub] = []
        self.published: list[_Message] = []  # in seq order
        self.open_loans: list[tuple[Loan, int]] = []  # (loan, footprint)
        self.tokens = 0
        self._attach()

    def _attach(self) -> None:
        n = len(self.published)
        self.subs.append(_Sub(self.channel.subscriber(), n, n))

    def _token(self) -> int:
        self.tokens += 1
        return self.tokens

    def _live(self) -> list[int]:
        """Footprints of what the producer may not reuse: held or unread messages, loans."""
        live = [fp for _, fp in self.open_loans]
        for i, msg in enumerate(self.published):
            for s in self.subs:
                if s.first <= i and (i >= s.next_index or any(j == i for _, j in s.held)):
                    live.append(msg.footprint)
                    break
        return live

    def _refusal_is_legitimate(self, size: int) -> None:
        live = self._live()
        if len(live) >= OPTS.capacity:
            return  # every descriptor is taken
        need = footprint(size)
        occupied = [fp for fp in live if fp]
        free = OPTS.arena_bytes - sum(occupied)
        assert need > 0, f"an empty message was refused with {len(live)} descriptors taken"
        assert need > free // (len(occupied) + 1), (
            f"{size} bytes refused with {len(live)} of {OPTS.capacity} descriptors and "
            f"{free} arena bytes free in at most {len(occupied) + 1} gaps"
        )

    # -- producing ---------------------------------------------------------------------------

    @rule(size=SIZES)
    def send(self, size: int) -> None:
        content = _content(self._token(), size)
        try:
            done = self.pub.send(content, timeout=0)
        except BackpressureTimeout:
            self._refusal_is_legitimate(size)
            return
        self.published.append(_Message(done.seq, content, footprint(size)))

    @rule(target=loans, size=SIZES)
    def take_loan(self, size: int) -> tuple[Loan, bytes] | None:
        try:
            loan = self.pub.loan(size, timeout=0)
        except BackpressureTimeout:
            self._refusal_is_legitimate(size)
            return None
        content = _content(self._token(), size)
        loan.view[:] = content
        self.open_loans.append((loan, footprint(size)))
        return loan, content

    def _close_loan(self, loan: Loan) -> int:
        for i, (open_loan, fp) in enumerate(self.open_loans):
            if open_loan is loan:
                del self.open_loans[i]
                return fp
        raise AssertionError("unknown loan")

    @rule(item=consumes(loans), shorter=st.booleans())
    def commit(self, item: tuple[Loan, bytes] | None, shorter: bool) -> None:
        if item is None:
            return
        loan, content = item
        length = len(content) // 2 if shorter else len(content)
        seq = loan.commit(length)
        fp = self._close_loan(loan)
        self.published.append(_Message(seq, content[:length], fp))

    @rule(item=consumes(loans))
    def discard(self, item: tuple[Loan, bytes] | None) -> None:
        if item is not None:
            item[0].discard()
            self._close_loan(item[0])

    # -- consuming ---------------------------------------------------------------------------

    @rule(data=st.data())
    def receive(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(self.subs))
        sample = s.sub.receive(timeout=0)
        pending = self.published[s.next_index :]
        if sample is None:
            assert pending == [], "a published message was not delivered"
            return
        assert pending, "a message arrived that was never published"
        assert sample.seq == pending[0].seq
        assert sample.tobytes() == pending[0].content
        s.held.append((sample, s.next_index))
        s.next_index += 1

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        holders = [s for s in self.subs if s.held]
        if not holders:
            return
        s = data.draw(st.sampled_from(holders))
        i = data.draw(st.integers(min_value=0, max_value=len(s.held) - 1))
        sample, _ = s.held.pop(i)
        sample.release()

    @precondition(lambda self: len(self.subs) < OPTS.max_subscribers)
    @rule()
    def attach(self) -> None:
        self._attach()

    @precondition(lambda self: len(self.subs) > 1)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(self.subs))
        self.subs.remove(s)
        s.sub.close()  # possibly holding samples: the publisher reclaims them

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def held_samples_are_intact(self) -> None:
        for s in self.subs:
            for sample, i in s.held:
                assert sample.tobytes() == self.published[i].content, "a held slot was reused"

    @invariant()
    def ring_stays_within_bounds(self) -> None:
        stats = self.pub.stats()
        assert 0 <= stats.in_flight <= OPTS.capacity
        assert 0 <= stats.arena_bytes_in_use <= stats.arena_bytes
        seqs = [m.seq for m in self.published]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)

    def teardown(self) -> None:
        try:
            for loan, _ in self.open_loans:
                loan.discard()
            for s in self.subs:
                for sample, _ in s.held:
                    sample.release()
                while True:
                    sample = s.sub.receive(timeout=0)
                    if sample is None:
                        break
                    sample.release()
            # Everything is released: one more message forces a full reclaim.
            self.pub.send(b"", timeout=0)
            for s in self.subs:
                last = s.sub.receive(timeout=0)
                assert last is not None
                last.release()
            self.pub.check_peers()
            stats = self.pub.stats()
            assert stats.in_flight == 0
            assert stats.arena_bytes_in_use == 0
        finally:
            self.channel.close()


RingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)


class _OnCore(RingMachine.TestCase):  # type: ignore[name-defined,misc]
    """The machine on one core of the hot path (the compiled one, or pure Python)."""

    __test__ = False
    core = "python"

    def setUp(self) -> None:
        if self.core not in _core.available():
            self.skipTest("the compiled ipc core is not built here")
        self._before = _core.active()
        _core.use(self.core)

    def tearDown(self) -> None:
        _core.use(self._before)


class TestRingMachinePython(_OnCore):
    __test__ = True
    core = "python"


class TestRingMachineCompiled(_OnCore):
    __test__ = True
    core = "c"
