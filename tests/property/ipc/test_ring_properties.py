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
from sealserve.ipc import Channel, ChannelOptions, Loan, Sample, Subscriber

OPTS = ChannelOptions(capacity=8, arena_bytes=16 << 10, max_subscribers=3, memory="anonymous")
SIZES = st.integers(min_value=0, max_value=6000)


def _content(token: int, size: int) -> bytes:
    pattern = token.to_bytes(4, "little") + bytes([token % 251])
    return (pattern * (size // len(pattern) + 1))[:size]


@dataclasses.dataclass
class _Sub:
    sub: Subscriber
    next_index: int  # index into published of the next message it should receive
    held: list[tuple[Sample, bytes]] = dataclasses.field(default_factory=list)


class RingMachine(RuleBasedStateMachine):
    loans = Bundle("loans")

    def __init__(self) -> None:
        super().__init__()
        self.channel = Channel.create(OPTS)
        self.pub = self.channel.publisher()
        self.subs: list[_Sub] = []
        self.published: list[tuple[int, bytes]] = []  # (seq, content) in seq order
        self.open_loans: list[Loan] = []
        self.tokens = 0
        self._attach()

    def _attach(self) -> None:
        self.subs.append(_Sub(self.channel.subscriber(), len(self.published)))

    def _token(self) -> int:
        self.tokens += 1
        return self.tokens

    # -- producing ---------------------------------------------------------------------------

    @rule(size=SIZES)
    def send(self, size: int) -> None:
        content = _content(self._token(), size)
        try:
            done = self.pub.send(content, timeout=0)
        except BackpressureTimeout:
            return
        self.published.append((done.seq, content))

    @rule(target=loans, size=SIZES)
    def take_loan(self, size: int) -> tuple[Loan, bytes] | None:
        try:
            loan = self.pub.loan(size, timeout=0)
        except BackpressureTimeout:
            return None
        content = _content(self._token(), size)
        loan.view[:] = content
        self.open_loans.append(loan)
        return loan, content

    @rule(item=consumes(loans), shorter=st.booleans())
    def commit(self, item: tuple[Loan, bytes] | None, shorter: bool) -> None:
        if item is None:
            return
        loan, content = item
        length = len(content) // 2 if shorter else len(content)
        seq = loan.commit(length)
        self.open_loans.remove(loan)
        self.published.append((seq, content[:length]))

    @rule(item=consumes(loans))
    def discard(self, item: tuple[Loan, bytes] | None) -> None:
        if item is not None:
            item[0].discard()
            self.open_loans.remove(item[0])

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
        seq, content = pending[0]
        assert sample.seq == seq
        assert sample.tobytes() == content
        s.next_index += 1
        s.held.append((sample, content))

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
            for sample, content in s.held:
                assert sample.tobytes() == content, "a held slot was reused"

    @invariant()
    def ring_stays_within_bounds(self) -> None:
        stats = self.pub.stats()
        assert 0 <= stats.in_flight <= OPTS.capacity
        assert 0 <= stats.arena_bytes_in_use <= stats.arena_bytes
        seqs = [seq for seq, _ in self.published]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)

    def teardown(self) -> None:
        try:
            for loan in self.open_loans:
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
TestRingMachine = RingMachine.TestCase
