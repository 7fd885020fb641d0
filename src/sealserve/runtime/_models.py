"""The model cache: unsealed models within a memory budget, loaded once, evicted to fit.

The budget is the EPC analogue: what the runtime may hold in plaintext models at once.  The
cache charges each model what its loader reserves (before it unseals anything, so memory is
accounted for before it is used) and, to make room, evicts models that no request is using:
what is needed and no more (the fewest models, then the least recently used).  A model that
is larger than the whole budget can never load
(:class:`~sealserve.errors.MemoryBudgetExceeded`); one that does not fit only because other
models are in use waits for them, until its deadline.

Loads are single-flighted: the first request for a model runs the loader, later ones wait on
its future (no spinning, no second load); if the load fails they all get its error.  A model
whose key version changed (the owner rotated its key) is retired and loaded again.  Retired
and evicted models are closed once their last lease is released.

Pure logic: no I/O, the loader does it; the clock only turns deadlines into timeouts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import enum
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._evict import choose_evictions
from sealserve._log import get_logger
from sealserve.errors import DeadlineExceeded, MemoryBudgetExceeded

__all__ = ["Closeable", "Lease", "ModelCache", "ModelCacheStats", "ResidentModel"]

_log = get_logger(__name__)


class Closeable(Protocol):
    def close(self) -> None: ...


_T = TypeVar("_T", bound=Closeable)
#: Called by a loader once it knows how much memory the model will take.
Reserve = Callable[[int], None]


class _State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    RETIRED = "retired"


class _Entry(Generic[_T]):
    __slots__ = ("charged", "future", "hits", "in_use", "model_id", "state", "value", "version")

    def __init__(self, model_id: str, version: int) -> None:
        self.model_id = model_id
        self.version = version
        self.state = _State.LOADING
        self.future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self.value: _T | None = None
        self.charged = 0
        self.in_use = 0
        self.hits = 0


class Lease(Generic[_T]):
    """The right to use a loaded model until :meth:`release` (or the end of ``with``).

    ``loaded`` says whether this lease's request ran the load (a cache miss), ``waited``
    whether it joined a load already under way.
    """

    __slots__ = ("_cache", "_entry", "_released", "loaded", "waited")

    def __init__(
        self, cache: ModelCache[_T], entry: _Entry[_T], *, loaded: bool, waited: bool
    ) -> None:
        self._cache = cache
        self._entry = entry
        self._released = False
        self.loaded = loaded
        self.waited = waited

    @property
    def value(self) -> _T:
        if self._released:
            raise RuntimeError("the lease was released")
        value = self._entry.value
        assert value is not None
        return value

    @property
    def model_id(self) -> str:
        return self._entry.model_id

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._cache._release(self._entry)

    def __enter__(self) -> Lease[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclasses.dataclass(frozen=True, slots=True)
class ResidentModel:
    model_id: str
    version: int
    state: str
    bytes: int
    in_use: int
    hits: int


@dataclasses.dataclass(frozen=True, slots=True)
class ModelCacheStats:
    budget_bytes: int
    used_bytes: int
    loads: int
    hits: int
    joined: int
    evictions: int
    failures: int
    models: tuple[ResidentModel, ...]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["models"] = [dataclasses.asdict(m) for m in self.models]
        return out


class ModelCache(Generic[_T]):
    """Models by id within ``budget_bytes`` (see the module docstring)."""

    def __init__(self, *, budget_bytes: int, clock: Clock = SYSTEM_CLOCK) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1:
            raise ValueError(f"budget_bytes must be a positive int, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._cond = threading.Condition()
        self._entries: collections.OrderedDict[str, _Entry[_T]] = collections.OrderedDict()
        self._retired: list[_Entry[_T]] = []
        self._used = 0
        self._loads = self._hits = self._joined = self._evictions = self._failures = 0

    # -- use -----------------------------------------------------------------------------------

    def acquire(
        self,
        model_id: str,
        *,
        version: int,
        loader: Callable[[Reserve], _T],
        deadline: float | None = None,
    ) -> Lease[_T]:
        """A lease on ``model_id`` at key ``version``, loading it with ``loader`` if needed.

        ``loader(reserve)`` must call ``reserve(nbytes)`` once, before it allocates the
        model, and return the loaded model.  ``deadline`` is on the cache clock's monotonic
        scale; waiting past it raises :class:`~sealserve.errors.DeadlineExceeded`.
        """
        to_close: list[_T] = []
        with self._cond:
            entry = self._entries.get(model_id)
            if entry is not None and entry.version != version:
                self._retire(entry, to_close)
                entry = None
            if entry is not None and entry.state is _State.READY:
                entry.in_use += 1
                entry.hits += 1
                self._hits += 1
                self._entries.move_to_end(model_id)
                return Lease(self, entry, loaded=False, waited=False)
            leader = entry is None
            if entry is None:
                entry = _Entry(model_id, version)
                self._entries[model_id] = entry
                self._loads += 1
            else:
                self._joined += 1
            entry.in_use += 1  # a waiter holds its place so the model cannot be evicted
        self._close_all(to_close)
        if leader:
            self._lead(entry, loader, deadline)
            return Lease(self, entry, loaded=True, waited=False)
        try:
            entry.future.result(self._remaining(deadline))
        except concurrent.futures.TimeoutError:
            self._release(entry)
            raise DeadlineExceeded(
                f"model {model_id!r} was still loading at the deadline"
            ) from None
        except BaseException:
            self._release(entry)
            raise
        return Lease(self, entry, loaded=False, waited=True)

    def _lead(
        self, entry: _Entry[_T], loader: Callable[[Reserve], _T], deadline: float | None
    ) -> None:
        reserved = False

        def reserve(nbytes: int) -> None:
            nonlocal reserved
            if reserved:
                raise RuntimeError("a loader reserves memory once")
            self._reserve(entry, nbytes, deadline)
            reserved = True

        try:
            value = loader(reserve)
            if not reserved:
                raise RuntimeError("the loader did not reserve memory for the model")
        except BaseException as exc:
            with self._cond:
                self._failures += 1
                if self._entries.get(entry.model_id) is entry:
                    del self._entries[entry.model_id]
                if entry in self._retired and entry.in_use <= 1:
                    self._retired.remove(entry)
                self._used -= entry.charged
                entry.charged = 0
                entry.in_use -= 1
                entry.state = _State.RETIRED
                self._cond.notify_all()
            entry.future.set_exception(exc)
            raise
        with self._cond:
            entry.value = value
            if entry.state is _State.LOADING:
                entry.state = _State.READY
            self._cond.notify_all()
        entry.future.set_result(value)
        _log.event("model_cache.loaded", model_id=entry.model_id, bytes=entry.charged)

    def _reserve(self, entry: _Entry[_T], nbytes: int, deadline: float | None) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
        if nbytes > self.budget_bytes:
            raise MemoryBudgetExceeded(
                f"model {entry.model_id!r} needs {nbytes} bytes; the runtime's whole memory "
                f"budget is {self.budget_bytes} bytes (raise --memory-budget-mb)"
            )
        to_close: list[_T] = []
        try:
            with self._cond:
                while True:
                    self._evict_for(nbytes, entry, to_close)
                    if self._used + nbytes <= self.budget_bytes:
                        self._used += nbytes
                        entry.charged = nbytes
                        return
                    remaining = self._remaining(deadline)
                    if remaining is not None and remaining <= 0:
                        raise DeadlineExceeded(
                            f"no room for model {entry.model_id!r} before the deadline: the "
                            "models in the memory budget are all in use"
                        )
                    self._cond.wait(remaining)
        finally:
            self._close_all(to_close)

    def _evict_for(self, nbytes: int, keep: _Entry[_T], to_close: list[_T]) -> None:
        """Evict what ``nbytes`` need and no more (the fewest idle models, then the least
        recently used: :func:`sealserve._evict.choose_evictions`).  Locked."""
        shortfall = self._used + nbytes - self.budget_bytes
        if shortfall <= 0:
            return
        idle = [
            (model_id, float(entry.charged))
            for model_id, entry in self._entries.items()  # least recently used first
            if entry is not keep and entry.state is _State.READY and not entry.in_use
        ]
        chosen = choose_evictions(idle, float(shortfall))
        if chosen is None:  # not enough is idle now: evict nothing, wait for the rest
            return
        for model_id in chosen:
            entry = self._entries.pop(model_id)
            self._evictions += 1
            self._drop(entry, to_close)
            _log.event("model_cache.evicted", model_id=model_id, bytes=entry.charged,
                       reason="room")  # fmt: skip

    def _release(self, entry: _Entry[_T]) -> None:
        to_close: list[_T] = []
        with self._cond:
            entry.in_use -= 1
            if entry.in_use == 0 and entry.state is _State.RETIRED and entry in self._retired:
                self._retired.remove(entry)
                self._drop(entry, to_close)
            self._cond.notify_all()
        self._close_all(to_close)

    # -- management ----------------------------------------------------------------------------

    def evict(self, model_id: str) -> bool:
        """Drop ``model_id`` now if idle, else once its last request ends; ``False`` if it
        was not resident."""
        to_close: list[_T] = []
        with self._cond:
            entry = self._entries.get(model_id)
            if entry is None:
                return False
            self._evictions += 1
            self._retire(entry, to_close)
            self._cond.notify_all()
        self._close_all(to_close)
        _log.event("model_cache.evicted", model_id=model_id, reason="asked")
        return True

    def clear(self) -> None:
        """Evict everything that is idle, retire the rest."""
        to_close: list[_T] = []
        with self._cond:
            for entry in list(self._entries.values()):
                self._retire(entry, to_close)
            self._cond.notify_all()
        self._close_all(to_close)

    def _retire(self, entry: _Entry[_T], to_close: list[_T]) -> None:
        """Take ``entry`` out of the index; close it now if idle and loaded.  Locked."""
        if self._entries.get(entry.model_id) is entry:
            del self._entries[entry.model_id]
        if entry.state is _State.READY and entry.in_use == 0:
            self._drop(entry, to_close)
        else:  # loading or in use: closed by the last release (or the failed load)
            entry.state = _State.RETIRED
            self._retired.append(entry)

    def _drop(self, entry: _Entry[_T], to_close: list[_T]) -> None:
        entry.state = _State.RETIRED
        self._used -= entry.charged
        entry.charged = 0
        if entry.value is not None:
            to_close.append(entry.value)
            entry.value = None

    @staticmethod
    def _close_all(values: list[_T]) -> None:
        for value in values:
            value.close()

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(0.0, deadline - self._clock.monotonic())

    # -- reading -------------------------------------------------------------------------------

    def __contains__(self, model_id: object) -> bool:
        with self._cond:
            entry = self._entries.get(model_id) if isinstance(model_id, str) else None
            return entry is not None and entry.state is _State.READY

    @property
    def used_bytes(self) -> int:
        with self._cond:
            return self._used

    def stats(self) -> ModelCacheStats:
        with self._cond:
            models = tuple(
                ResidentModel(
                    model_id=e.model_id,
                    version=e.version,
                    state=e.state.value,
                    bytes=e.charged,
                    in_use=e.in_use,
                    hits=e.hits,
                )
                for e in self._entries.values()
            )
            return ModelCacheStats(
                budget_bytes=self.budget_bytes,
                used_bytes=self._used,
                loads=self._loads,
                hits=self._hits,
                joined=self._joined,
                evictions=self._evictions,
                failures=self._failures,
                models=models,
            )
