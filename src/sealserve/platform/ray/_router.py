"""FnPacker as a Ray Serve request router.

Ray Serve asks a request router, for each request, which replicas may take it
(``choose_replicas``: ranks of replicas, best first; an empty answer means "not now").
:class:`FnPackerRequestRouter` answers with the one replica FnPacker's policy chose
(:class:`~sealserve.platform.ray.ReplicaPacker`: the same policy objects as the simulator and
the local platform), or with nothing while the policy holds the request, and tells the packer
when a request completes.

Every answer sets the request's ``routing_context.should_backoff``: Ray Serve then sleeps its
back-off (``RayOptions.router_backoff_s``: a few milliseconds, doubling to a cap) before it asks
again.  Without it, Ray Serve asks again at once: a held request turns the router's event loop
into a busy loop that starves everything else on it, completions included (six requests at
once hung the gateway for good).  Only ``2 x replicas`` requests are being routed at a time;
the rest wait in Ray Serve's queue without costing anything.

When Ray Serve's replica set changes (``update_replicas``, a replica actor that died), the
packer follows at once: a removed replica's instance leaves the group and stops being billed,
a new replica takes a start that waits for one.  After each change the packer's demand (the
starts that wait for a replica) goes to the autoscaler (:mod:`._demand`).

The request names its model in the handle's ``multiplexed_model_id`` (or, failing that, its
``model_id`` argument).  A request without a model, or one the packer cannot place (a model
the store does not have), goes to every replica, as Ray Serve's default router would send it,
and the replica answers it.  Only this module imports ``ray``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from sealserve._log import get_logger
from sealserve.errors import SealserveError
from sealserve.platform.ray._demand import DemandBoard
from sealserve.platform.ray._packer import ReplicaPacker, ReplicaView
from sealserve.platform.ray._registry import board_for, packer_for

__all__ = ["FnPackerRequestRouter"]

_log = get_logger(__name__)


class FnPackerRequestRouter(RequestRouter):
    """Ray Serve's ``RequestRouter`` whose choice is FnPacker's (see the module docstring)."""

    _packer: ReplicaPacker | None = None
    _board: DemandBoard | None = None

    def initialize_state(self, **kwargs: Any) -> None:
        """Ray Serve passes the deployment's ``request_router_kwargs``
        (:meth:`RayOptions.router_kwargs`)."""
        self._packer = packer_for(kwargs)
        self._board = board_for(kwargs)
        self._held: dict[str, PendingRequest] = {}

    @property
    def packer(self) -> ReplicaPacker:
        if self._packer is None:
            raise SealserveError("the FnPacker router was not initialized with its kwargs")
        return self._packer

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is None or self._packer is None:
            return [candidate_replicas]
        # Whatever the answer, Ray Serve backs off before it asks again (module docstring).
        pending_request.routing_context.should_backoff = True
        metadata = pending_request.metadata
        kwargs = pending_request.kwargs if isinstance(pending_request.kwargs, dict) else {}
        model = metadata.multiplexed_model_id or kwargs.get("model_id")
        if not isinstance(model, str) or not model:
            return [candidate_replicas]
        now = time.monotonic()
        self._let_go_of_cancelled(now)
        key = metadata.internal_request_id
        request_id = kwargs.get("request_id")
        views = [ReplicaView(r.replica_id.unique_id, r.routing_stats) for r in candidate_replicas]
        try:
            target = self._packer.route(
                key,
                model=model,
                replicas=views,
                now=now,
                request_id=request_id if isinstance(request_id, str) else None,
            )
        except (SealserveError, LookupError, ValueError) as exc:
            _log.event("ray_router.unpacked", level=logging.INFO, error=type(exc).__name__)
            return [candidate_replicas]
        finally:
            self._publish()
        if target is None:
            self._held[key] = pending_request
            return []
        self._held.pop(key, None)
        return [[r for r in candidate_replicas if r.replica_id.unique_id == target]]

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        if self._packer is not None:
            self._packer.completed(internal_request_id, time.monotonic())
            self._publish()

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Ray Serve's replica set changed: the packer follows at once (module docstring)."""
        super().update_replicas(replicas)
        self._follow_replicas()

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._follow_replicas()

    def _follow_replicas(self) -> None:
        if self._packer is None:
            return
        replicas = self.curr_replicas.values()
        views = [ReplicaView(r.replica_id.unique_id, r.routing_stats) for r in replicas]
        self._packer.sync(views, time.monotonic())
        self._publish()

    def _publish(self) -> None:
        if self._board is not None and self._packer is not None:
            self._board.note(self._packer.starts_waiting)

    def _let_go_of_cancelled(self, now: float) -> None:
        """Requests held at the router whose callers gave up leave the packer."""
        assert self._packer is not None
        for key, pending in list(self._held.items()):
            if pending.future.cancelled():
                del self._held[key]
                self._packer.cancel(key, now)
