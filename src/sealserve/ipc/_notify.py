"""Notification: QoS hints, the adaptive spin budget, and the wait loop on a futex word.

Every wait in the data plane is the same handshake on two words of the segment: a futex
*epoch* word the other side bumps, and a *waiting* word of our own that tells the other side
a bump is needed::

    waiter                                   notifier
    e = epoch                                <change the state>
    waiting = e + 1                          full fence
    full fence                               if waiting: epoch += 1; futex_wake(epoch)
    if <state changed>: done
    futex_wait(epoch, e)   # the kernel re-checks epoch == e atomically

Either the notifier sees ``waiting`` or the waiter sees the new state (the fences forbid both
missing each other), and ``futex_wait`` returns at once if the epoch moved in between, so no
wake-up is lost.  The flag names the epoch the waiter sleeps on, so a notifier that batches
(the ``batch`` policy of :mod:`sealserve.ipc._scheduler`) can skip a waiter whose epoch has
already moved: a wake-up is on its way to it.  Blocking waits are sliced (50 ms) so that
the peer's liveness is checked even when nothing ever wakes us: a dead peer ends the wait
with :class:`~sealserve.errors.PeerDied`.

QoS hints choose how to wait:

``LATENCY``     spin first, for a budget twice the wake-up cost measured on this machine
                (spinning longer than a wake-up would take can never pay; shorter misses
                messages that were about to arrive), then block.  The spin yields the CPU
                every few turns, so a peer that shares our core runs (and answers) while we
                spin instead of waiting for the spin to end; and spinning that keeps missing
                (the peer answers slower than a wake-up, or cannot run while we spin) stops
                for a growing number of waits before it is tried again;
``EFFICIENCY``  block at once; the fewest CPU cycles per message;
``THROUGHPUT``  block, and ask to be woken only on transitions that matter (the producer's
                ``batch`` policy sends one wake-up per sleep): a consumer sleeps
                only when the ring is empty (so it is woken on empty -> non-empty), a producer
                on a full ring asks to be woken once half of its messages are released
                (full -> non-full with hysteresis), so a stream costs few wake-ups.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Sequence

from sealserve._clock import Clock
from sealserve.ipc import _sys

__all__ = ["QoS", "SpinBudget", "WaitCounters", "wait_on_epoch"]

_SLICE_S = 0.05
#: Spin turns between two looks at the clock and two yields of the CPU.
_SPIN_CHECK_EVERY = 8


class QoS(enum.Enum):
    """How a channel (or one message, or one receive) trades CPU for latency."""

    LATENCY = "latency"
    EFFICIENCY = "efficiency"
    THROUGHPUT = "throughput"

    @classmethod
    def parse(cls, value: QoS | str) -> QoS:
        if isinstance(value, QoS):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(q.value for q in cls)
            raise ValueError(f"qos must be one of {names}, got {value!r}") from None


class SpinBudget:
    """How long to spin before blocking, from the measured cost of a wake-up.

    Pure: it is fed measurements (``observe_wake``) and answers ``budget_ns``.  The budget is
    ``factor`` times an exponentially weighted average of observed wake-up latencies (the
    time from the notifier's wake call to the sleeper running), clamped to
    ``[min_ns, max_ns]``.  With ``factor = 2`` spinning wastes at most as much as the
    wake-up it tries to avoid (the classic competitive bound).
    """

    __slots__ = (
        "_backoff",
        "_ewma",
        "_misses",
        "_skip",
        "alpha",
        "factor",
        "max_backoff",
        "max_ns",
        "min_ns",
        "miss_limit",
        "observations",
    )

    def __init__(
        self,
        *,
        initial_wake_ns: int = 20_000,
        factor: float = 2.0,
        min_ns: int = 2_000,
        max_ns: int = 200_000,
        alpha: float = 0.125,
        miss_limit: int = 3,
        max_backoff: int = 1024,
    ) -> None:
        if initial_wake_ns <= 0:
            raise ValueError(f"initial_wake_ns must be > 0, got {initial_wake_ns!r}")
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
        if not 0 <= min_ns <= max_ns:
            raise ValueError(f"need 0 <= min_ns <= max_ns, got {min_ns!r} and {max_ns!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be within (0, 1], got {alpha!r}")
        if miss_limit < 1:
            raise ValueError(f"miss_limit must be >= 1, got {miss_limit!r}")
        if max_backoff < 1:
            raise ValueError(f"max_backoff must be >= 1, got {max_backoff!r}")
        self._ewma = float(initial_wake_ns)
        self.factor = factor
        self.min_ns = min_ns
        self.max_ns = max_ns
        self.alpha = alpha
        self.miss_limit = miss_limit
        self.max_backoff = max_backoff
        self.observations = 0
        self._misses = 0  # spins in a row that ended without the event
        self._backoff = 0  # waits to skip spinning after the next run of misses
        self._skip = 0  # waits left that block at once

    def observe_wake(self, ns: int) -> None:
        """Record one wake-up latency; values outside (0, 10 ms] are scheduler noise."""
        if 0 < ns <= 10_000_000:
            self._ewma += self.alpha * (ns - self._ewma)
            self.observations += 1

    def next_spin_ns(self) -> int:
        """How long the next wait spins: the budget, or 0 while spinning is backed off."""
        if self._skip:
            self._skip -= 1
            return 0
        return self.budget_ns

    def observe_spin(self, *, hit: bool) -> None:
        """Record how a spin ended.

        ``miss_limit`` misses in a row turn spinning off for ``backoff`` waits, which starts
        at 16 and doubles (up to ``max_backoff``) each time a spin tried after a back-off
        misses again; a hit turns it back on and forgets the back-off.  Missing means the
        event came later than a wake-up would have: the peer is slow, or it cannot run while
        we spin (it shares our core).  Either way the spin only cost CPU.
        """
        if hit:
            self._misses = 0
            self._backoff = 0
            return
        self._misses += 1
        if self._misses >= self.miss_limit:
            self._backoff = min(max(16, self._backoff * 2), self.max_backoff)
            self._skip = self._backoff
            self._misses = self.miss_limit - 1  # after the back-off, one more miss backs off

    @property
    def backing_off(self) -> int:
        """Waits left that block without spinning (0: spinning is on)."""
        return self._skip

    @property
    def wake_ns(self) -> float:
        return self._ewma

    @property
    def budget_ns(self) -> int:
        return int(min(max(self.factor * self._ewma, self.min_ns), self.max_ns))


class WaitCounters:
    """What the waits of one channel end did (plain integers; metrics read them)."""

    __slots__ = (
        "blocks",
        "shared_cpu",
        "spin_hits",
        "spin_misses",
        "timeouts",
        "wakeups_received",
    )

    def __init__(self) -> None:
        self.shared_cpu = 0  # spins that found the peer on this CPU and yielded
        self.spin_hits = 0
        self.spin_misses = 0
        self.blocks = 0
        self.wakeups_received = 0
        self.timeouts = 0


def wait_on_epoch(
    ready: Callable[[], bool],
    *,
    words: memoryview,
    address: int,
    epoch_word: int,
    waiting_word: int,
    waiting_value: int | None,
    stamp_word: int,
    spin_ns: int,
    deadline: float | None,
    clock: Clock,
    check: Callable[[], None],
    budget: SpinBudget | None,
    counters: WaitCounters,
    cpu_word: int | None = None,
    peer_cpu_words: Sequence[int] = (),
    spinner: Callable[[int, bool], bool] | None = None,
) -> bool:
    """Wait until ``ready()``; ``True`` when it is, ``False`` once ``deadline`` has passed.

    ``waiting_value`` is what the waiting word says while we sleep; ``None`` writes the epoch
    read plus one (data waits: the notifier can tell who still needs a wake-up).

    ``cpu_word`` is where this end writes the CPU it waits on (plus one), and
    ``peer_cpu_words`` where the ends it waits for write theirs: a spin that finds the peer
    on its own CPU yields at every turn, since the peer cannot answer while we hold the core.

    ``spinner(spin_ns, yield_each_turn)``, where given, spins natively (the compiled core,
    without the GIL) instead of calling ``ready()`` in a Python loop; it returns whether the
    wait is over.

    ``check()`` runs between blocking slices and raises when the peer is gone.  ``deadline``
    is on ``clock.monotonic()``; ``None`` waits for ever.
    """
    cpu = -1
    if cpu_word is not None:
        cpu = _sys.current_cpu()
        words[cpu_word] = cpu + 1
    if spin_ns > 0:
        limit = time.perf_counter_ns() + spin_ns
        # A peer last seen on this very CPU cannot run while we spin: yield at every turn.
        every = _SPIN_CHECK_EVERY
        if cpu >= 0:
            for word in peer_cpu_words:
                if words[word] == cpu + 1:
                    every = 1
                    counters.shared_cpu += 1
                    break
        if spinner is not None:
            hit = spinner(spin_ns, every == 1)
        else:
            hit = False
            n = 0
            while True:
                if ready():
                    hit = True
                    break
                n += 1
                if n % every == 0:
                    if time.perf_counter_ns() >= limit:
                        break
                    if every == 1:
                        os.sched_yield()  # let the peer that shares this core run
        if hit:
            counters.spin_hits += 1
            if budget is not None:
                budget.observe_spin(hit=True)
            return True
        counters.spin_misses += 1
        if budget is not None:
            budget.observe_spin(hit=False)
    epoch_address = address + epoch_word * 8
    while True:
        epoch = words[epoch_word] & 0xFFFFFFFF
        words[waiting_word] = epoch + 1 if waiting_value is None else waiting_value
        _sys.full_fence()
        if ready():
            words[waiting_word] = 0
            return True
        if deadline is None:
            slice_s = _SLICE_S
        else:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                words[waiting_word] = 0
                counters.timeouts += 1
                return False
            slice_s = min(_SLICE_S, remaining)
        counters.blocks += 1
        slept_at = time.monotonic_ns()
        woke = _sys.futex_wait(epoch_address, epoch, slice_s)
        words[waiting_word] = 0
        if woke:
            counters.wakeups_received += 1
            if budget is not None:
                stamp = words[stamp_word]
                if stamp >= slept_at:
                    budget.observe_wake(time.monotonic_ns() - stamp)
        if ready():
            return True
        check()
