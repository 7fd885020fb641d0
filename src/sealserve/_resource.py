"""One lifecycle for every resource: ``UNOPENED -> OPENED -> CLOSED``, written once.

As httpx's clients and trio's ``AsyncResource``: a resource is opened once, used while
opened, and closed promptly (never left to the garbage collector)::

    class Thing(Resource):
        resource_name = "the thing"

        def _open(self) -> None:    # acquire; the state is already OPENED here
            ...

        def _close(self) -> None:   # release; runs once, on the first close()
            ...

        def use(self) -> None:
            self._check_opened()
            ...

    with Thing() as thing:          # open() (an opened resource is entered as it is)
        thing.use()
                                    # close() on leaving

* :meth:`Resource.open` a second time, or after :meth:`~Resource.close`, raises
  :class:`ResourceStateError`, as does using a resource that is not opened
  (:meth:`Resource._check_opened`): a caller's mistake is a ``RuntimeError``, never a
  retryable domain error.
* An ``_open`` that fails closes the resource (``_close`` releases what it had acquired)
  and the error propagates: a resource that did not open is ``CLOSED``.
* :meth:`Resource.close` is idempotent and may be called in any state (an unopened resource
  is closed too, and can no longer be opened); ``_close`` runs exactly once.

:class:`AsyncResource` is the same with coroutines (``await open()``, ``async with``).
"""

from __future__ import annotations

import enum
import threading
from typing import ClassVar, Self

__all__ = ["AsyncResource", "Resource", "ResourceState", "ResourceStateError"]


class ResourceStateError(RuntimeError):
    """A resource used out of its lifecycle: opened twice, or used unopened or closed.

    A programming error, not a condition to retry: it is outside the
    :class:`~sealserve.errors.SealserveError` tree and has no ``retryable``.
    """


class ResourceState(enum.Enum):
    """Where a resource is in its lifecycle."""

    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class _Lifecycle:
    """The state and its checks, shared by the sync and the async resource."""

    #: How messages name the resource ("the gateway client").
    resource_name: ClassVar[str] = "the resource"

    def __init__(self) -> None:
        self._state = ResourceState.UNOPENED
        self._state_lock = threading.Lock()

    @property
    def state(self) -> ResourceState:
        """``UNOPENED``, ``OPENED`` or ``CLOSED``."""
        return self._state

    def _check_opened(self) -> None:
        """Raise :class:`ResourceStateError` unless the resource is opened."""
        state = self._state
        if state is ResourceState.OPENED:
            return
        if state is ResourceState.UNOPENED:
            raise ResourceStateError(
                f"{self.resource_name} is unopened; open it first (or use it inside 'with')"
            )
        raise ResourceStateError(f"{self.resource_name} is closed; make a new one")

    def _begin_open(self) -> None:
        with self._state_lock:
            if self._state is not ResourceState.UNOPENED:
                raise ResourceStateError(
                    f"{self.resource_name} is {self._state.value}; open it only once"
                )
            self._state = ResourceState.OPENED

    def _begin_close(self) -> bool:
        """Mark the resource closed; whether this call is the first close."""
        with self._state_lock:
            if self._state is ResourceState.CLOSED:
                return False
            self._state = ResourceState.CLOSED
            return True

    def _begin_enter(self) -> bool:
        """Whether entering ``with`` must open the resource (it may be opened already)."""
        if self._state is ResourceState.UNOPENED:
            return True
        self._check_opened()
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value}>"


class Resource(_Lifecycle):
    """A resource with a synchronous lifecycle (see the module docstring)."""

    def open(self) -> Self:
        """Open the resource; :class:`ResourceStateError` if it was opened
        or closed before."""
        self._begin_open()
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the resource and release what it holds (idempotent)."""
        if self._begin_close():
            self._close()

    def _open(self) -> None:
        """Acquire what the resource needs (the state is ``OPENED`` already)."""

    def _close(self) -> None:
        """Release what the resource holds; runs once, whatever the state was."""

    def __enter__(self) -> Self:
        return self.open() if self._begin_enter() else self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncResource(_Lifecycle):
    """A resource whose opening and closing are coroutines (see the module docstring)."""

    async def open(self) -> Self:
        """Open the resource; :class:`ResourceStateError` if it was opened
        or closed before."""
        self._begin_open()
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the resource and release what it holds (idempotent)."""
        if self._begin_close():
            await self._close()

    async def _open(self) -> None:
        """Acquire what the resource needs (the state is ``OPENED`` already)."""

    async def _close(self) -> None:
        """Release what the resource holds; runs once, whatever the state was."""

    async def __aenter__(self) -> Self:
        return await self.open() if self._begin_enter() else self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
