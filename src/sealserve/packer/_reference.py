"""How low packing could go: GB-second bounds from a ``dedicated`` run's residency.

Both bounds keep every model resident exactly as long as ``dedicated`` kept the model's
function alive, so they have ``dedicated``'s latency; they differ in what memory costs:

* :func:`ideal_packing_gb_s`: memory is fluid: the models' own memory plus one instance's
  reserve for the host and the runtime (the group's ``runtime_base_mb``), as if one instance
  grew and shrank to the byte.  Packing can save each function's runtime, its
  rounding up to a memory step and its empty space, never more, without evicting models sooner
  than a keep-alive.
* :func:`ideal_shaped_gb_s`: memory comes in the group's shapes: at every moment the alive
  models are packed into instances of those shapes with the least memory (an exact bin
  packing), and repacked for free whenever the set changes.  No moves, cold starts or
  keep-alive tails are charged: no router can do better in these shapes with that residency.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sealserve.packer._config import GroupConfig
from sealserve.packer._costs import CostModel
from sealserve.packer._decision import InstanceShape
from sealserve.packer._sim import SimResult

__all__ = ["ideal_packing_gb_s", "ideal_shaped_gb_s", "pack_memory_mb"]

#: Past this many models at once the packing is first-fit decreasing (an upper bound).
EXACT_UP_TO = 14


def ideal_packing_gb_s(run: SimResult, costs: CostModel, config: GroupConfig) -> float:
    """GB-seconds of a packer with ``run``'s residency and fluid memory (see the module docs).

    ``run`` is a ``dedicated`` run (a function per model, named ``<group>/<model>``).
    """
    prefix = f"{config.name}/"
    mb_s = sum(costs.memory_mb(f.removeprefix(prefix)) * sec for f, sec in run.function_s.items())
    return (mb_s + config.runtime_base_mb * run.end_s) / 1024.0


def ideal_shaped_gb_s(run: SimResult, costs: CostModel, config: GroupConfig) -> tuple[float, bool]:
    """GB-seconds of a packer with ``run``'s residency in ``config``'s shapes (module docs).

    Returns the GB-seconds and whether every packing was exact (more than
    :data:`EXACT_UP_TO` models alive at once are packed first-fit decreasing).
    """
    if not run.function_intervals:
        raise ValueError("run has no function_intervals: give a run made by simulate()")
    prefix = f"{config.name}/"
    events: list[tuple[float, int, str]] = []
    for function, start, stop in run.function_intervals:
        model = function.removeprefix(prefix)
        events.append((start, 1, model))
        events.append((stop, -1, model))
    events.sort()
    shapes = config.shapes
    alive: dict[str, int] = {}
    mb_s = 0.0
    exact = True
    previous = events[0][0]
    for at, delta, model in events:
        models = tuple(sorted(m for m, n in alive.items() if n > 0))
        if models and at > previous:
            sizes = tuple(sorted((costs.memory_mb(m) for m in models), reverse=True))
            exact = exact and len(sizes) <= EXACT_UP_TO
            mb_s += _packed(sizes, shapes) * (at - previous)
        alive[model] = alive.get(model, 0) + delta
        previous = at
    return mb_s / 1024.0, exact


@functools.lru_cache(maxsize=4096)
def _packed(sizes: tuple[float, ...], shapes: tuple[InstanceShape, ...]) -> int:
    return pack_memory_mb(sizes, shapes)


def pack_memory_mb(sizes: Sequence[float], shapes: Sequence[InstanceShape]) -> int:
    """The least billed memory of instances of ``shapes`` that hold models of ``sizes`` MB.

    Exact (branch and bound) up to :data:`EXACT_UP_TO` models; first-fit decreasing past it.
    Raises :class:`ValueError` when a model fits in no shape.
    """
    items = sorted(sizes, reverse=True)
    by_memory = sorted(shapes, key=lambda s: s.memory_mb)
    for size in items:
        if not any(s.budget_mb >= size for s in by_memory):
            raise ValueError(f"a model of {size:g} MB fits in no shape")
    best = _first_fit(items, by_memory)
    if len(items) > EXACT_UP_TO:
        return best
    ratio = min(s.memory_mb / s.budget_mb for s in by_memory)
    suffix = [0.0] * (len(items) + 1)
    for k in range(len(items) - 1, -1, -1):
        suffix[k] = suffix[k + 1] + items[k]

    def search(k: int, free: list[float], memory: int, slack: float) -> None:
        nonlocal best
        # what is left needs at least its size x the best ratio, less the room already open
        if memory + max(0.0, suffix[k] - slack) * ratio >= best:
            return
        if k == len(items):
            best = memory
            return
        size = items[k]
        tried: set[float] = set()
        for j, room in enumerate(free):
            if room >= size and room not in tried:
                tried.add(room)
                free[j] = room - size
                search(k + 1, free, memory, slack - size)
                free[j] = room
        for shape in by_memory:
            if shape.budget_mb >= size:
                free.append(shape.budget_mb - size)
                search(k + 1, free, memory + shape.memory_mb, slack + shape.budget_mb - size)
                free.pop()

    search(0, [], 0, 0.0)
    return best


def _first_fit(items: Sequence[float], shapes: Sequence[InstanceShape]) -> int:
    """First-fit decreasing into open instances; a new one takes the smallest shape that holds
    the model and what is left, else the largest."""
    free: list[float] = []
    memory = 0
    left = sum(items)
    for size in items:
        for j, room in enumerate(free):
            if room >= size:
                free[j] = room - size
                break
        else:
            fitting = [s for s in shapes if s.budget_mb >= size]
            shape = next((s for s in fitting if s.budget_mb >= left), fitting[-1])
            free.append(shape.budget_mb - size)
            memory += shape.memory_mb
        left -= size
    return memory
