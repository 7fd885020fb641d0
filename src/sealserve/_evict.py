"""Which resident models to evict to make room: what is needed, and no more.

Both the runtime's model cache (bytes of its memory budget) and FnPacker's plan of an
instance (MB of its budget) evict idle models to make room for a load.  Evicting the least
recently used first until the newcomer fits can push out several small models where one
larger one would have made room (a reload of ResNet-50 evicted three resident models where one
would have done); each of them is then loaded again on its next request.  The rule here:

1. as few models as possible: the smallest ``k`` for which some ``k`` idle models free
   enough (and at least ``min_count``, for a cap on resident models);
2. among the sets of that size that free enough, the one whose models were used longest ago
   (compare the most recently used member of each set first, then the next);
3. so with plenty of one size, least recently used first, as before.

That is :func:`choose_evictions`, the runtime's rule (it has no cost model: a reload is a
reload).  FnPacker's planner keeps LRU's order, which its policies' measured costs assume
(evicting a large model used lately makes its next request pay the longest load), and only
drops what LRU evicted beyond need: :func:`prune_lru_evictions`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

__all__ = ["choose_evictions", "prune_lru_evictions"]

#: Above this many candidates the exact search gives way to a greedy one.
_EXACT_UP_TO: Final = 14
_EPS: Final = 1e-9


def choose_evictions(
    candidates: Sequence[tuple[str, float]], shortfall: float, *, min_count: int = 0
) -> tuple[str, ...] | None:
    """The models to evict, least recently used first, or ``None`` if no set frees enough.

    ``candidates`` are the idle models that may go, as (name, size), least recently used
    first; ``shortfall`` is how much must be freed (nothing to do when it is <= 0 and
    ``min_count`` is 0); ``min_count`` is how many must go whatever their size.
    """
    if min_count < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count!r}")
    if shortfall <= _EPS and min_count == 0:
        return ()
    n = len(candidates)
    if min_count > n:
        return None
    sizes = sorted((size for _, size in candidates), reverse=True)
    k = max(min_count, 1)
    while k <= n and sum(sizes[:k]) < shortfall - _EPS:
        k += 1
    if k > n:
        return None
    if n <= _EXACT_UP_TO:
        best: tuple[int, ...] | None = None
        best_key: tuple[int, ...] | None = None
        for combo in itertools.combinations(range(n), k):
            if sum(candidates[i][1] for i in combo) < shortfall - _EPS:
                continue
            key = tuple(sorted(combo, reverse=True))  # newest member first: smaller is older
            if best_key is None or key < best_key:
                best, best_key = combo, key
        assert best is not None  # the k largest free enough
        return tuple(candidates[i][0] for i in best)
    # Many candidates: the oldest first, then swap in larger ones only as far as needed.
    chosen = sorted(range(n), key=lambda i: -candidates[i][1])[:k]
    return tuple(candidates[i][0] for i in sorted(chosen))


def prune_lru_evictions(
    candidates: Sequence[tuple[str, float]], shortfall: float, *, min_count: int = 0
) -> tuple[str, ...] | None:
    """Least recently used first, but nothing that is not needed: take idle models oldest
    first until enough is freed, then give back every one (newest first) without which
    enough is still freed.  For a planner whose policy is LRU (SeSeMI's): it keeps LRU's
    order of preference and drops LRU's superfluous evictions.  ``None`` if even every
    candidate does not free enough."""
    if min_count < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count!r}")
    chosen: list[tuple[str, float]] = []
    freed = 0.0
    for name, size in candidates:
        if freed >= shortfall - _EPS and len(chosen) >= min_count:
            break
        chosen.append((name, size))
        freed += size
    if freed < shortfall - _EPS or len(chosen) < min_count:
        return None
    for entry in reversed(list(chosen)):
        if len(chosen) > min_count and freed - entry[1] >= shortfall - _EPS:
            chosen.remove(entry)
            freed -= entry[1]
    return tuple(name for name, _ in chosen)
