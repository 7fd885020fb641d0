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
                messages that were about to arrive), then block;
``EFFICIENCY``  block at once; the fewest CPU cycles per message;
``THROUGHPUT``  block, and ask to be woken only on transitions that matter (the producer's
                ``batch`` policy sends one wake-up per sleep): a consumer sleeps
                only when the ring is empty (so it is woken on empty -> non-empty), a producer
                on a full ring asks to be woken once half of its messages are released
                (full -> non-full with hysteresis), so a stream costs few wake-ups.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from sealserve._clock import Clock
from sealserve.ipc import _sys

__all__ = ["QoS", "SpinBudget", "WaitCounters", "wait_on_epoch"]

_SLICE_S = 0.05
_SPIN_CHECK_EVERY = 32


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

    __slots__ = ("_ewma", "alpha", "factor", "max_ns", "min_ns", "observations")

    def __init__(
        self,
        *,
        initial_wake_ns: int = 20_000,
        factor: float = 2.0,
        min_ns: int = 2_000,
        max_ns: int = 200_000,
        alpha: float = 0.125,
    ) -> None:
        if initial_wake_ns <= 0:
            raise ValueError(f"initial_wake_ns must be > 0, got {initial_wake_ns!r}")
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
        if not 0 <= min_ns <= max_ns:
            raise ValueError(f"need 0 <= min_ns <= max_ns, got {min_ns!r} and {max_ns!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be within (0, 1], got {alpha!r}")
        self._ewma = float(initial_wake_ns)
        self.factor = factor
        self.min_ns = min_ns
        self.max_ns = max_ns
        self.alpha = alpha
        self.observations = 0

    def observe_wake(self, ns: int) -> None:
        """Record one wake-up latency; values outside (0, 10 ms] are scheduler noise."""
        if 0 < ns <= 10_000_000:
            self._ewma += self.alpha * (ns - self._ewma)
            self.observations += 1

    @property
    def wake_ns(self) -> float:
        return self._ewma

    @property
    def budget_ns(self) -> int:
        return int(min(max(self.factor * self._ewma, self.min_ns), self.max_ns))


class WaitCounters:
    """What the waits of one channel end did (plain integers; metrics read them)."""

    __slots__ = ("blocks", "spin_hits", "spin_misses", "timeouts", "wakeups_received")

    def __init__(self) -> None:
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
) -> bool:
    """Wait until ``ready()``; ``True`` when it is, ``False`` once ``deadline`` has passed.

    ``waiting_value`` is what the waiting word says while we sleep; ``None`` writes the epoch
    read plus one (data waits: the notifier can tell who still needs a wake-up).

    ``check()`` runs between blocking slices and raises when the peer is gone.  ``deadline``
    is on ``clock.monotonic()``; ``None`` waits for ever.
    """
    if spin_ns > 0:
        start = time.perf_counter_ns()
        limit = start + spin_ns
        n = 0
        while True:
            if ready():
                counters.spin_hits += 1
                return True
            n += 1
            if n % _SPIN_CHECK_EVERY == 0 and time.perf_counter_ns() >= limit:
                break
        counters.spin_misses += 1
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
