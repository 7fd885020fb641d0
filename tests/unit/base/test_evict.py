"""choose_evictions: the fewest models that free enough, then the least recently used."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealserve._evict import choose_evictions, prune_lru_evictions

# (name, size), least recently used first
RESIDENT = [("s1", 10.0), ("s2", 10.0), ("s3", 10.0), ("big", 60.0)]


def test_one_large_model_goes_instead_of_three_small_ones() -> None:
    assert choose_evictions(RESIDENT, 25.0) == ("big",)


def test_the_least_recently_used_goes_when_it_is_enough() -> None:
    assert choose_evictions(RESIDENT, 5.0) == ("s1",)
    assert choose_evictions([("a", 50.0), ("b", 50.0)], 40.0) == ("a",)


def test_nothing_is_evicted_without_a_shortfall_and_none_when_nothing_frees_enough() -> None:
    assert choose_evictions(RESIDENT, 0.0) == ()
    assert choose_evictions(RESIDENT, 91.0) is None
    assert choose_evictions([], 1.0) is None


def test_a_resident_cap_forces_a_count_whatever_the_sizes() -> None:
    assert choose_evictions(RESIDENT, 0.0, min_count=1) == ("s1",)
    assert choose_evictions(RESIDENT, 65.0, min_count=1) == ("s1", "big")
    assert choose_evictions(RESIDENT, 0.0, min_count=5) is None
    with pytest.raises(ValueError, match="min_count"):
        choose_evictions(RESIDENT, 1.0, min_count=-1)


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=50), min_size=0, max_size=9),
    shortfall=st.integers(min_value=-5, max_value=200),
    min_count=st.integers(min_value=0, max_value=3),
)
def test_it_is_a_smallest_set_that_frees_enough_and_the_oldest_such(
    sizes: list[int], shortfall: int, min_count: int
) -> None:
    candidates = [(f"m{i}", float(s)) for i, s in enumerate(sizes)]
    chosen = choose_evictions(candidates, float(shortfall), min_count=min_count)
    feasible = [
        combo
        for k in range(len(sizes) + 1)
        for combo in itertools.combinations(range(len(sizes)), k)
        if k >= min_count and sum(sizes[i] for i in combo) >= shortfall
    ]
    if not feasible:
        assert chosen is None
        return
    assert chosen is not None
    picked = [int(name[1:]) for name in chosen]
    assert picked == sorted(picked)  # least recently used first
    assert len(picked) >= min_count
    assert sum(sizes[i] for i in picked) >= shortfall
    fewest = min(len(c) for c in feasible)
    assert len(picked) == fewest  # no more than needed
    best = min(tuple(sorted(c, reverse=True)) for c in feasible if len(c) == fewest)
    assert tuple(sorted(picked, reverse=True)) == best  # the oldest such set


def test_pruned_lru_keeps_lru_order_and_drops_what_is_not_needed() -> None:
    assert prune_lru_evictions(RESIDENT, 25.0) == ("s1", "s2", "s3")  # LRU's own choice
    assert prune_lru_evictions(RESIDENT, 65.0) == ("s1", "big")  # s2, s3 not needed
    assert prune_lru_evictions(RESIDENT, 5.0) == ("s1",)
    assert prune_lru_evictions(RESIDENT, 0.0, min_count=2) == ("s1", "s2")
    assert prune_lru_evictions(RESIDENT, 91.0) is None


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=50), min_size=0, max_size=9),
    shortfall=st.integers(min_value=-5, max_value=200),
    min_count=st.integers(min_value=0, max_value=3),
)
def test_pruned_lru_frees_enough_and_nothing_can_be_given_back(
    sizes: list[int], shortfall: int, min_count: int
) -> None:
    candidates = [(f"m{i}", float(s)) for i, s in enumerate(sizes)]
    chosen = prune_lru_evictions(candidates, float(shortfall), min_count=min_count)
    if sum(sizes) < shortfall or len(sizes) < min_count:
        assert chosen is None
        return
    assert chosen is not None
    picked = [int(name[1:]) for name in chosen]
    freed = sum(sizes[i] for i in picked)
    assert picked == sorted(picked)
    assert freed >= shortfall
    assert len(picked) >= min_count
    if len(picked) > min_count:
        assert all(freed - sizes[i] < shortfall for i in picked)  # each one is needed
