"""The model cache: single-flight loads, LRU under a budget, leases, retirement."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from sealserve._clock import ManualClock
from sealserve.errors import DeadlineExceeded, MemoryBudgetExceeded, ModelNotAvailable
from sealserve.runtime import Lease, ModelCache


class Model:
    """A loaded model: closing it is observable."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


class Loader:
    """Counts loads; optionally waits on a gate so several requests meet one load."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.loads: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail: Exception | None = None

    def __call__(self, name: str) -> Callable[[Callable[[int], None]], Model]:
        def load(reserve: Callable[[int], None]) -> Model:
            self.loads.append(name)
            self.entered.set()
            if self.gate is not None:
                assert self.gate.wait(10)
            if self.fail is not None:
                raise self.fail
            reserve(self.sizes[name])
            return Model(name)

        return load


def acquire(
    cache: ModelCache[Model],
    loader: Loader,
    name: str,
    *,
    version: int = 1,
    deadline: float | None = None,
) -> Lease[Model]:
    return cache.acquire(name, version=version, loader=loader(name), deadline=deadline)


def test_a_hit_does_not_load_again() -> None:
    loader = Loader({"a": 10})
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    with acquire(cache, loader, "a") as first:
        assert first.loaded
        assert not first.waited
        model = first.value
    with acquire(cache, loader, "a") as second:
        assert not second.loaded
        assert second.value is model
    assert loader.loads == ["a"]
    stats = cache.stats()
    assert (stats.loads, stats.hits, stats.used_bytes) == (1, 1, 10)


def test_concurrent_requests_share_one_load() -> None:
    loader = Loader({"a": 10})
    loader.gate = threading.Event()
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    results: list[tuple[bool, bool, Model]] = []
    lock = threading.Lock()

    def request() -> None:
        with acquire(cache, loader, "a") as lease, lock:
            results.append((lease.loaded, lease.waited, lease.value))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    assert loader.entered.wait(10)
    while cache.stats().joined < 7:  # every other request is waiting on the one load
        threading.Event().wait(0.001)
    loader.gate.set()
    for t in threads:
        t.join(10)
    assert loader.loads == ["a"]
    assert sum(loaded for loaded, _, _ in results) == 1
    assert sum(waited for _, waited, _ in results) == 7
    assert len({id(model) for _, _, model in results}) == 1


def test_a_failed_load_fails_every_waiter_and_is_not_cached() -> None:
    loader = Loader({"a": 10})
    loader.gate = threading.Event()
    loader.fail = ModelNotAvailable("no such model")
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    errors: list[BaseException] = []

    def request() -> None:
        try:
            acquire(cache, loader, "a")
        except ModelNotAvailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    while cache.stats().joined < 3:
        threading.Event().wait(0.001)
    loader.gate.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 4
    assert cache.stats().failures == 1
    assert cache.stats().used_bytes == 0
    loader.fail = None
    loader.gate = None
    with acquire(cache, loader, "a") as lease:
        assert lease.loaded


def test_lru_evicts_the_least_recently_used_idle_model() -> None:
    loader = Loader({"a": 40, "b": 40, "c": 40})
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    a = acquire(cache, loader, "a")
    a_model = a.value
    a.release()
    acquire(cache, loader, "b").release()
    acquire(cache, loader, "a").release()  # a is now more recent than b
    acquire(cache, loader, "c").release()  # needs room: b goes
    assert "a" in cache
    assert "b" not in cache
    assert "c" in cache
    assert not a_model.closed
    assert cache.stats().evictions == 1
    assert cache.stats().used_bytes == 80


def test_models_in_use_are_never_evicted_and_a_load_waits_until_the_deadline() -> None:
    clock = ManualClock()
    loader = Loader({"a": 60, "b": 60})
    cache: ModelCache[Model] = ModelCache(budget_bytes=100, clock=clock)
    held = acquire(cache, loader, "a")
    with pytest.raises(DeadlineExceeded, match="in use"):
        acquire(cache, loader, "b", deadline=clock.monotonic())
    assert not held.value.closed
    assert "b" not in cache
    done = threading.Event()

    def later() -> None:
        with acquire(cache, loader, "b", deadline=clock.monotonic() + 30):
            done.set()

    waiter = threading.Thread(target=later)
    waiter.start()
    model = held.value
    held.release()  # room: the waiting load evicts a and proceeds
    waiter.join(10)
    assert done.is_set()
    assert model.closed


def test_a_model_larger_than_the_whole_budget_is_refused() -> None:
    loader = Loader({"giant": 101})
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    with pytest.raises(MemoryBudgetExceeded, match="whole memory budget"):
        acquire(cache, loader, "giant")
    assert cache.stats().used_bytes == 0
    assert "giant" not in cache


def test_evict_closes_at_once_when_idle_and_after_the_last_lease_otherwise() -> None:
    loader = Loader({"a": 10, "b": 10})
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    idle = acquire(cache, loader, "a")
    idle_model = idle.value
    idle.release()
    assert cache.evict("a") is True
    assert idle_model.closed
    busy = acquire(cache, loader, "b")
    assert cache.evict("b") is True
    assert not busy.value.closed
    assert "b" not in cache  # new requests load it afresh
    model = busy.value
    busy.release()
    assert model.closed
    assert cache.evict("b") is False
    assert cache.stats().used_bytes == 0


def test_a_new_key_version_retires_the_old_model() -> None:
    loader = Loader({"a": 10})
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    old = acquire(cache, loader, "a", version=1)
    new = acquire(cache, loader, "a", version=2)
    assert new.loaded
    assert old.value is not new.value
    old_model = old.value
    old.release()
    assert old_model.closed
    new.release()
    assert cache.stats().used_bytes == 10


def test_a_loader_must_reserve_once() -> None:
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)

    def never(reserve: Callable[[int], None]) -> Model:
        return Model("x")

    def twice(reserve: Callable[[int], None]) -> Model:
        reserve(1)
        reserve(1)
        return Model("y")

    with pytest.raises(RuntimeError, match="did not reserve"):
        cache.acquire("x", version=1, loader=never)
    with pytest.raises(RuntimeError, match="once"):
        cache.acquire("y", version=1, loader=twice)
    assert cache.stats().used_bytes == 0


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget_bytes"):
        ModelCache(budget_bytes=0)


def test_a_load_evicts_what_it_needs_and_no_more() -> None:
    """The case that evicted three resident models where one would have made room: three
    small ones used long ago and a large one used lately; a large newcomer now evicts the
    large one alone, and the small ones stay resident."""
    loader = Loader({"s1": 10, "s2": 10, "s3": 10, "big": 60, "new": 60})
    cache: ModelCache[Model] = ModelCache(budget_bytes=100)
    for name in ("s1", "s2", "s3", "big"):
        acquire(cache, loader, name).release()
    acquire(cache, loader, "new").release()
    assert [n for n in ("s1", "s2", "s3", "big", "new") if n in cache] == ["s1", "s2", "s3", "new"]
    assert cache.stats().evictions == 1
    acquire(cache, loader, "big").release()  # now "new" is the only one that frees enough
    assert "new" not in cache
    assert cache.stats().evictions == 2
