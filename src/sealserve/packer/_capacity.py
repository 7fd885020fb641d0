"""Sizing a packed group by prediction: what the load needs, what covers it, what to start.

``sealserve`` keeps as much instance memory alive as the predicted load needs, in a few shapes
(:attr:`~sealserve.packer.GroupConfig.shapes`).  The pieces here are pure functions of the
instances and the prediction:

* a :class:`Need` is the memory the expected working set takes and the instances its slots
  take; a :class:`NeedWindow` keeps the largest need seen lately (scale down only after it);
* the *core* (:func:`core_of`) is the alive instances that cover the need with the least
  billed memory; the others are *surplus*: the policy drains them (their models move to the
  core once, and they reach their keep-alive and stop);
* a *resize* (:func:`resize_of`) is a new instance of a shape that, with some of the alive
  ones, covers the need with less memory than any core of alive instances: by at least its own
  memory, so that the two being alive together while the old ones drain is paid back within
  a keep-alive;
* a new instance otherwise takes the smallest shape that holds its model and the part of the
  expected working set the alive instances cannot hold (:func:`shape_to_start`): one instance
  sized for the shortfall, not a small one that the next models evict each other from.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from sealserve.packer._decision import InstanceShape

__all__ = [
    "Need",
    "NeedWindow",
    "Resize",
    "Sized",
    "core_of",
    "resize_of",
    "shape_to_start",
]

_TOLERANCE_MB = 1e-6


class Sized(Protocol):
    """What sizing reads of an instance (an :class:`~sealserve.packer.Instance` is one)."""

    @property
    def id(self) -> int: ...

    @property
    def memory_mb(self) -> int: ...

    @property
    def budget_mb(self) -> float: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Need:
    """What the predicted load needs: ``memory_mb`` of models resident, ``instances`` for slots."""

    memory_mb: float
    instances: int

    def __post_init__(self) -> None:
        if not self.memory_mb >= 0:
            raise ValueError(f"memory_mb must be >= 0, got {self.memory_mb!r}")
        if self.instances < 0:
            raise ValueError(f"instances must be >= 0, got {self.instances!r}")

    def max(self, other: Need) -> Need:
        """The larger of each part."""
        return Need(max(self.memory_mb, other.memory_mb), max(self.instances, other.instances))

    def covered_by(self, instances: Sequence[Sized]) -> bool:
        """Whether ``instances`` hold the memory (by their budgets) and are enough of them."""
        budget = sum(i.budget_mb for i in instances)
        return budget >= self.memory_mb - _TOLERANCE_MB and len(instances) >= self.instances


class NeedWindow:
    """The largest need seen within the last ``window_s`` (each part on its own).

    As autoscalers do (Kubernetes' scale-down stabilization window), capacity follows a rising
    need at once and a falling one only after the window: a burst's instances are not drained
    and started again.  Amortized O(1) per observation (a monotonic queue per part).
    """

    def __init__(self, *, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self.window_s = window_s
        self._memory: collections.deque[tuple[float, float]] = collections.deque()
        self._instances: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, need: Need, now: float) -> None:
        """Remember ``need`` as seen at ``now`` (times never go back)."""
        self._expire(now)
        while self._memory and self._memory[-1][1] <= need.memory_mb:
            self._memory.pop()
        self._memory.append((now, need.memory_mb))
        while self._instances and self._instances[-1][1] <= need.instances:
            self._instances.pop()
        self._instances.append((now, need.instances))

    def largest(self, need: Need, now: float) -> Need:
        """``need``, or the larger need seen within the window (a read: it changes nothing,
        so a policy's pure decision may ask; :meth:`observe` drops what expired)."""
        start = now - self.window_s
        # Each queue decreases from its front, so its first entry within the window is the
        # largest there; the expired ones, if any, are at the front.
        memory = next((m for at, m in self._memory if at >= start), 0.0)
        instances = next((n for at, n in self._instances if at >= start), 0)
        return need.max(Need(memory, instances))

    def _expire(self, now: float) -> None:
        start = now - self.window_s
        while self._memory and self._memory[0][0] < start:
            self._memory.popleft()
        while self._instances and self._instances[0][0] < start:
            self._instances.popleft()


def _cheapest_cover(
    instances: Sequence[Sized], need: Need, costs: Sequence[float]
) -> tuple[int, float] | None:
    """The subset (a bit mask over ``instances``) covering ``need`` with the least memory;
    among equals the cheapest to leave out (``costs``), then the one of the oldest.  With its
    memory; ``None`` when none covers it."""
    n = len(instances)
    size = 1 << n
    budget = [0.0] * size
    memory = [0] * size
    left = [0.0] * size
    count = [0] * size
    total_cost = sum(costs)
    best: tuple[int, float, int] | None = None
    for mask in range(1, size):
        low = mask & -mask
        k = low.bit_length() - 1
        rest = mask ^ low
        budget[mask] = budget[rest] + instances[k].budget_mb
        memory[mask] = memory[rest] + instances[k].memory_mb
        left[mask] = left[rest] + costs[k]
        count[mask] = count[rest] + 1
        if budget[mask] < need.memory_mb - _TOLERANCE_MB or count[mask] < need.instances:
            continue
        # bit k is instances[k], oldest first: a smaller mask leaves out younger ones
        key = (memory[mask], round(total_cost - left[mask], 9), mask)
        if best is None or key < best:
            best = key
    return None if best is None else (best[2], float(best[0]))


def core_of(
    instances: Sequence[Sized],
    need: Need,
    *,
    drain_cost: Callable[[Sized], float] | None = None,
    exhaustive_up_to: int = 8,
) -> frozenset[int]:
    """The ids of the alive ``instances`` to keep for ``need`` (the core); the rest drain.

    The core covers the need with the least billed memory; among cores of equal memory, the
    one whose left-out instances cost least to drain (``drain_cost``: what moving their models
    is expected to cost), then the one of the oldest instances.  When no subset covers the need,
    every instance is core.  ``instances`` are in age order, oldest first (as the group lists
    them); past ``exhaustive_up_to`` of them, the oldest that cover the need are the core.
    """
    if not instances or not need.covered_by(instances):
        return frozenset(i.id for i in instances)
    if len(instances) > exhaustive_up_to:
        core: list[Sized] = []
        for inst in instances:
            if need.covered_by(core):
                break
            core.append(inst)
        return frozenset(i.id for i in core)
    costs = [drain_cost(i) if drain_cost is not None else 0.0 for i in instances]
    found = _cheapest_cover(instances, need, costs)
    assert found is not None  # all of them cover it
    mask = found[0]
    return frozenset(inst.id for k, inst in enumerate(instances) if mask >> k & 1)


@dataclasses.dataclass(frozen=True, slots=True)
class Resize:
    """Start an instance of ``shape``; the alive instances ``replaced`` then drain."""

    shape: InstanceShape
    kept: frozenset[int]
    replaced: frozenset[int]
    saving_mb: int


@dataclasses.dataclass(frozen=True, slots=True)
class _New:
    """A candidate instance of a shape, not started yet."""

    memory_mb: int
    budget_mb: float
    id: int = -1


def resize_of(
    instances: Sequence[Sized],
    need: Need,
    shapes: Sequence[InstanceShape],
    *,
    largest_model_mb: Callable[[Sized], float],
    drain_cost: Callable[[Sized], float] | None = None,
    exhaustive_up_to: int = 8,
) -> Resize | None:
    """A new instance that, with some alive ones, covers ``need`` in less memory; or ``None``.

    The new configuration must save at least the new instance's own memory against the best
    core of alive instances (see the module docs), and every model of the instances it
    replaces must fit in one of the instances that remain or in the new one
    (``largest_model_mb``: the largest model an instance holds).  Of several shapes, the
    largest saving, then the smallest shape.  ``instances`` are the alive ones, oldest first;
    the caller makes one change at a time (none while an instance is starting).
    """
    if not shapes or not instances or len(instances) >= exhaustive_up_to:
        return None
    if not need.covered_by(instances):
        return None
    # No cover holds the need in less than need x the best memory-to-budget ratio: when even
    # that would not save the smallest shape's memory, there is nothing to find.
    ratio = min(s.memory_mb / s.budget_mb for s in shapes)
    alive_mb = sum(i.memory_mb for i in instances)
    if alive_mb - need.memory_mb * ratio < shapes[0].memory_mb:
        return None
    costs = [drain_cost(i) if drain_cost is not None else 0.0 for i in instances]
    found = _cheapest_cover(instances, need, costs)
    assert found is not None  # all of them cover it
    _, current_mb = found
    best: Resize | None = None
    for shape in shapes:
        if shape.memory_mb > current_mb - shape.memory_mb:
            break  # shapes are smallest first: no larger one can save its own memory
        pool: list[Sized] = [*instances, _New(shape.memory_mb, shape.budget_mb)]
        cover = _cheapest_cover(pool, need, [*costs, 0.0])
        if cover is None:
            continue
        mask, memory = cover
        if not mask >> len(instances) & 1:
            continue  # the best cover does without the new instance
        saving = int(current_mb - memory)
        if saving < shape.memory_mb:
            continue
        kept = [inst for k, inst in enumerate(instances) if mask >> k & 1]
        replaced = [inst for k, inst in enumerate(instances) if not mask >> k & 1]
        room = max([shape.budget_mb, *(i.budget_mb for i in kept)])
        if any(largest_model_mb(i) > room + _TOLERANCE_MB for i in replaced):
            continue
        if best is None or saving > best.saving_mb:
            best = Resize(
                shape, frozenset(i.id for i in kept), frozenset(i.id for i in replaced), saving
            )
    return best


def shape_to_start(
    shapes: Sequence[InstanceShape], *, model_mb: float, shortfall_mb: float = 0.0
) -> InstanceShape | None:
    """The smallest of ``shapes`` (smallest first) that holds ``model_mb`` and the predicted
    working set the alive instances leave out (``shortfall_mb``); when none holds that much,
    the largest, if it holds the model; ``None`` if no shape holds the model."""
    wanted = max(model_mb, shortfall_mb)
    fits = [s for s in shapes if s.budget_mb >= model_mb - _TOLERANCE_MB]
    for shape in fits:
        if shape.budget_mb >= wanted - _TOLERANCE_MB:
            return shape
    return fits[-1] if fits else None
