"""The interface every routing policy implements, and the helpers they share.

A policy is a small class.  :meth:`Policy.route` is a pure decision: it reads the request, the
group and the time it is given and returns a :class:`~sealserve.packer.Decision`; it changes
nothing, sleeps on nothing and does no I/O.  What a policy learns it learns in the callbacks,
which the router calls as things happen, with the times they were measured:

* :meth:`Policy.on_arrival` once per request, before its first routing;
* :meth:`Policy.on_routed` after a decision was applied (a ``START`` now names its instance);
* :meth:`Policy.on_ready` when a cold start finished, with its measured duration;
* :meth:`Policy.on_loaded` when a model load finished, with its measured duration;
* :meth:`Policy.on_complete` when a request finished, with its measured execution time;
* :meth:`Policy.on_stopped` when an instance scaled to zero or failed.

So the trace simulator (virtual time) and the live router (real time) run the same objects.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar

from sealserve.errors import PackerError
from sealserve.packer._decision import Decision, RouteRequest
from sealserve.packer._group import FunctionGroup
from sealserve.packer._instance import Instance

__all__ = ["Policy", "packed_order", "require_fits"]


class Policy(abc.ABC):
    """Base class of routing policies; subclasses set :attr:`name` and implement :meth:`route`."""

    #: The name the CLI and the reports use.
    name: ClassVar[str]
    #: Models one instance may hold at once under this policy (``None``: its memory budget).
    resident_limit: int | None = None

    @abc.abstractmethod
    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        """Decide where ``request`` goes; must not change any state (the policy's or the
        group's): the same inputs give the same decision, and what it learns it learns in the
        callbacks below (tests/unit/packer/test_purity.py checks every policy)."""

    def on_arrival(  # noqa: B027 - an optional hook
        self, request: RouteRequest, now: float
    ) -> None:
        """A request arrived (called once, before its first :meth:`route`)."""

    def on_routed(  # noqa: B027 - an optional hook
        self, request: RouteRequest, decision: Decision, group: FunctionGroup, now: float
    ) -> None:
        """``decision`` was applied to ``group`` (for a START it names the new instance)."""

    def on_ready(  # noqa: B027 - an optional hook
        self, instance: Instance, cold_start_s: float, now: float
    ) -> None:
        """``instance`` finished its cold start, which took ``cold_start_s``."""

    def on_loaded(  # noqa: B027 - an optional hook
        self, instance: Instance, model: str, load_s: float, now: float
    ) -> None:
        """``instance`` finished loading ``model``, which took ``load_s``."""

    def on_complete(  # noqa: B027 - an optional hook
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        """``request`` finished on ``instance``; its inference took ``exec_s``."""

    def on_stopped(  # noqa: B027 - an optional hook
        self, instance: Instance, now: float
    ) -> None:
        """``instance`` scaled to zero (or failed); it is gone with its resident models."""

    def options(self) -> dict[str, Any]:
        """The policy's settings, for reports."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def packed_order(instances: Iterable[Instance]) -> list[Instance]:
    """Instances in the order that consolidates load: ready first, busiest first, oldest first.

    Sending work to the busiest instance that can take it leaves the others idle, so that they
    reach their keep-alive and scale to zero: fewer instances alive, fewer GB-seconds.
    """
    return sorted(instances, key=lambda i: (not i.is_ready, -i.in_flight, i.id))


def require_fits(group: FunctionGroup, model: str) -> None:
    """Raise :class:`PackerError` when ``model`` can never fit in one of the group's instances."""
    if not group.fits(model):
        raise PackerError(
            f"model {model!r} needs {group.model_memory_mb(model):.0f} MB, more than the "
            f"instance budget of {group.config.budget_mb:.0f} MB; raise the budget"
        )
