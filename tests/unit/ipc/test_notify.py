"""QoS hints, the adaptive spin budget, and the futex wait loop (threads, anonymous memory)."""

from __future__ import annotations

import mmap
import os
import threading

import pytest

from sealserve._clock import ManualClock, SystemClock
from sealserve.errors import PeerDied
from sealserve.ipc import QoS, SpinBudget, _sys
from sealserve.ipc._notify import WaitCounters, wait_on_epoch


def test_qos_parses_names_and_refuses_others() -> None:
    assert QoS.parse("latency") is QoS.LATENCY
    assert QoS.parse(QoS.THROUGHPUT) is QoS.THROUGHPUT
    with pytest.raises(ValueError, match="qos must be one of latency, efficiency, throughput"):
        QoS.parse("turbo")


def test_spin_budget_is_twice_the_measured_wake_up_cost() -> None:
    b = SpinBudget(initial_wake_ns=20_000, alpha=0.5)
    assert b.budget_ns == 40_000
    for _ in range(30):
        b.observe_wake(5_000)
    assert b.wake_ns == pytest.approx(5_000, rel=0.01)
    assert b.budget_ns == pytest.approx(10_000, rel=0.01)
    assert b.observations == 30


def test_spin_budget_is_clamped_and_ignores_noise() -> None:
    b = SpinBudget(initial_wake_ns=20_000, min_ns=8_000, max_ns=50_000, alpha=1.0)
    b.observe_wake(1_000)
    assert b.budget_ns == 8_000
    b.observe_wake(1_000_000)
    assert b.budget_ns == 50_000
    b.observe_wake(-5)
    b.observe_wake(60_000_000_000)  # a minute: the sleeper was descheduled, not woken late
    assert b.wake_ns == 1_000_000
    assert b.observations == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_wake_ns": 0}, "initial_wake_ns"),
        ({"factor": 0}, "factor"),
        ({"min_ns": 10, "max_ns": 5}, "min_ns"),
        ({"alpha": 0}, "alpha"),
    ],
)
def test_spin_budget_names_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpinBudget(**kwargs)  # type: ignore[arg-type]


class _Words:
    """Four words of anonymous shared memory: state, epoch, waiting flag, stamp."""

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, 4096)
        self.words = memoryview(self.map).cast("Q")
        self.address = _sys.address_of(self.map)

    def close(self) -> None:
        self.words.release()
        self.map.close()


def _wait(w: _Words, *, spin_ns: int, deadline: float | None, clock: object, check=None) -> bool:  # type: ignore[no-untyped-def]
    return wait_on_epoch(
        lambda: w.words[0] != 0,
        words=w.words,
        address=w.address,
        epoch_word=1,
        waiting_word=2,
        waiting_value=1,
        stamp_word=3,
        spin_ns=spin_ns,
        deadline=deadline,
        clock=clock,  # type: ignore[arg-type]
        check=check or (lambda: None),
        budget=None,
        counters=_COUNTERS,
    )


_COUNTERS = WaitCounters()


def test_a_sleeper_is_woken_through_the_epoch_word() -> None:
    w = _Words()
    try:
        result: list[bool] = []
        t = threading.Thread(
            target=lambda: result.append(_wait(w, spin_ns=0, deadline=None, clock=SystemClock()))
        )
        blocks_before = _COUNTERS.blocks
        t.start()
        for _ in range(100_000):
            if w.words[2] == 1:  # it announced it is going to sleep
                break
            threading.Event().wait(0.0005)
        w.words[0] = 1
        _sys.full_fence()
        assert w.words[2] == 1
        w.words[1] += 1
        _sys.futex_wake(w.address + 8)
        t.join(timeout=10)
        assert result == [True]
        assert _COUNTERS.blocks > blocks_before
        assert w.words[2] == 0  # the flag is cleared on the way out
    finally:
        w.close()


def test_spinning_sees_a_change_without_blocking() -> None:
    w = _Words()
    try:
        w.words[0] = 1
        hits = _COUNTERS.spin_hits
        assert _wait(w, spin_ns=1_000_000, deadline=None, clock=SystemClock())
        assert _COUNTERS.spin_hits == hits + 1
    finally:
        w.close()


def test_a_deadline_on_the_injected_clock_ends_the_wait() -> None:
    w = _Words()
    try:
        clock = ManualClock()
        clock.advance(10)
        assert not _wait(w, spin_ns=0, deadline=clock.monotonic() - 1, clock=clock)
        assert _COUNTERS.timeouts >= 1
    finally:
        w.close()


def test_check_runs_between_slices_and_ends_a_wait_on_a_dead_peer() -> None:
    w = _Words()
    try:
        calls: list[int] = []

        def check() -> None:
            calls.append(1)
            if len(calls) >= 2:
                raise PeerDied("gone")

        with pytest.raises(PeerDied):
            _wait(w, spin_ns=0, deadline=None, clock=SystemClock(), check=check)
        assert len(calls) == 2
    finally:
        w.close()


def test_spinning_that_keeps_missing_backs_off_and_is_tried_again() -> None:
    b = SpinBudget(initial_wake_ns=20_000, miss_limit=3, max_backoff=64)
    assert b.next_spin_ns() == 40_000
    b.observe_spin(hit=False)
    b.observe_spin(hit=False)
    assert b.next_spin_ns() == 40_000  # two misses: still spinning
    b.observe_spin(hit=False)
    assert b.backing_off == 16
    assert [b.next_spin_ns() for _ in range(16)] == [0] * 16
    assert b.next_spin_ns() == 40_000  # tried again
    b.observe_spin(hit=False)  # and missed: a longer back-off at once
    assert b.backing_off == 32
    for _ in range(32):
        b.next_spin_ns()
    b.observe_spin(hit=False)
    assert b.backing_off == 64
    for _ in range(64):
        b.next_spin_ns()
    b.observe_spin(hit=False)
    assert b.backing_off == 64  # capped at max_backoff
    for _ in range(64):
        b.next_spin_ns()
    b.observe_spin(hit=True)  # a hit turns spinning back on and forgets the back-off
    assert b.backing_off == 0
    b.observe_spin(hit=False)
    b.observe_spin(hit=False)
    b.observe_spin(hit=False)
    assert b.backing_off == 16
    assert b.budget_ns == 40_000  # the budget itself still follows the wake-up cost


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"miss_limit": 0}, "miss_limit"), ({"max_backoff": 0}, "max_backoff")]
)
def test_spin_back_off_names_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpinBudget(**kwargs)


def test_a_spin_that_finds_the_peer_on_its_cpu_yields_and_says_so() -> None:
    w = _Words()
    try:
        counters = WaitCounters()
        budget = SpinBudget()
        cpus = max(os.cpu_count() or 1, 1)
        # The peer's words claim every CPU, so whichever one this thread runs on matches.
        peer_words = list(range(8, 8 + cpus))
        for i, word in enumerate(peer_words):
            w.words[word] = i + 1
        turns = [0]

        def ready() -> bool:
            turns[0] += 1
            return turns[0] > 3

        assert wait_on_epoch(
            ready,
            words=w.words,
            address=w.address,
            epoch_word=1,
            waiting_word=2,
            waiting_value=1,
            stamp_word=3,
            spin_ns=10_000_000_000,
            deadline=None,
            clock=SystemClock(),
            check=lambda: None,
            budget=budget,
            counters=counters,
            cpu_word=4,
            peer_cpu_words=peer_words,
        )
        assert counters.spin_hits == 1
        assert counters.shared_cpu == 1
        assert 1 <= w.words[4] <= cpus  # this end wrote the CPU it waited on, plus one
        # A peer on another CPU (or unknown, 0): a plain spin.
        for word in peer_words:
            w.words[word] = 0
        turns[0] = 0
        assert wait_on_epoch(
            ready,
            words=w.words,
            address=w.address,
            epoch_word=1,
            waiting_word=2,
            waiting_value=1,
            stamp_word=3,
            spin_ns=10_000_000_000,
            deadline=None,
            clock=SystemClock(),
            check=lambda: None,
            budget=budget,
            counters=counters,
            cpu_word=4,
            peer_cpu_words=peer_words,
        )
        assert counters.shared_cpu == 1
        assert counters.spin_hits == 2
    finally:
        w.close()
