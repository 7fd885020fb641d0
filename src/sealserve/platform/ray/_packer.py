"""FnPacker over Ray Serve replicas: the pure core of the request router.

Ray Serve owns the replicas (it starts, stops and replaces them); FnPacker decides which one
serves each request.  :class:`ReplicaPacker` keeps FnPacker's :class:`~sealserve.packer.Router`
(the same policy objects as the simulator and the local platform) in step with the replicas
Ray Serve reports, and turns each decision into a replica, or into "hold the request":

* the group holds the instances the policy started: a ``START`` takes a replica the group
  does not use yet (a *spare*, kept by ``min_replicas`` or added by the autoscaler) at once,
  else it is held until Ray Serve adds one
  (:class:`~sealserve.platform.ray.PackerAutoscaler` adds a replica while requests are held),
  and that replica *is* the new instance; one that does not come within ``start_timeout_s``
  is given up;
* a replica that is gone leaves the group (``instance_failed``): its requests are routed
  again; a runtime restart (a new generation in the replica's routing stats) does the same,
  and the replica is a spare again;
* ``RUN`` on an instance -> its replica; ``WAIT`` -> hold (Ray Serve asks again after a
  backoff);
* a request that completes frees its slot.  A model load is not its own call on Ray Serve: the
  replica loads a model when a request for it arrives (the runtime single-flights the load),
  so the first request of a model that completes on a replica ends its load in the group.
  The times the policy learns are measured here, at the router: a request's time from being
  sent (or from its model's load ending) to its completion; the load's time from the routing
  decision to the first completion (so it includes one inference).

It does no I/O, never sleeps and reads no clock: every call takes ``now``.  It is thread-safe
(Ray Serve's router runs on its own event loop; the gateway reads :meth:`snapshot`).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sealserve.packer import DecisionKind, Policy, RouteRequest
from sealserve.platform._actions import DecisionRecord
from sealserve.platform._config import PlatformConfig
from sealserve.platform._controller import RouterCore
from sealserve.platform._stats import PlatformStats

__all__ = ["ReplicaPacker", "ReplicaView"]

#: A duration the router could not measure (the capped policy does not pass it on).
_NOT_MEASURED = -1.0


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaView:
    """A replica as Ray Serve's router reports it: its id and its last routing stats."""

    replica_id: str
    routing_stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Request:
    rid: int
    key: str
    model: str
    request_id: str | None
    arrived: float
    instance: int | None = None
    #: The router holds it as waiting (after a WAIT, or after its instance was lost).
    waiting: bool = False
    sent_at: float | None = None
    abandoned: bool = False
    waits: int = 0


class ReplicaPacker(RouterCore):
    """FnPacker's router over Ray Serve's replicas (see the module docstring).

    ``model_memory_mb`` gives the memory a model takes in a runtime's budget (the model
    store's sizes, as on the local platform).  A ``START`` whose replica has not come up
    within ``config.start_timeout_s`` is given up and its requests are routed again.
    """

    def __init__(
        self,
        config: PlatformConfig,
        *,
        policy: Policy,
        model_memory_mb: Callable[[str], float],
    ) -> None:
        # every replica has one size
        super().__init__(config, policy=policy, model_memory_mb=model_memory_mb, sizes=False)
        self._by_request_id: collections.OrderedDict[str, DecisionRecord] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._requests: dict[str, _Request] = {}
        self._by_rid: dict[int, _Request] = {}
        self._replica_of: dict[int, str] = {}
        self._instance_of: dict[str, int] = {}
        self._pending_starts: dict[int, float] = {}
        self._spawned_at: dict[int, float] = {}
        self._generation: dict[str, object] = {}
        self._stats: dict[str, Mapping[str, Any]] = {}

    # -- routing -------------------------------------------------------------------------------

    def route(
        self,
        key: str,
        *,
        model: str,
        replicas: Sequence[ReplicaView],
        now: float,
        request_id: str | None = None,
    ) -> str | None:
        """The replica for request ``key`` (a model id's request), or ``None`` to hold it.

        Called again for the same ``key`` until it returns a replica (and again if Ray Serve
        could not send it there): the answer stays that replica while its instance lives.
        A model no instance can hold is not packed: it goes to any replica, whose runtime
        refuses it (``MemoryBudgetExceeded``).
        """
        with self._lock:
            self._sync(replicas, now)
            req = self._requests.get(key)
            if req is None:
                if not self.router.group.fits(model):
                    return replicas[0].replica_id if replicas else None
                req = _Request(next(self._ids), key, model, request_id, arrived=now)
                self._requests[key] = req
                self._by_rid[req.rid] = req
            if req.instance is not None:
                return self._target(req, now)
            routed = self.router.route(RouteRequest(req.rid, model, req.arrived), now)
            decision = routed.decision
            if decision.kind is DecisionKind.WAIT:
                if req.waits == 0:
                    self._record(req, decision, now)
                req.waits += 1
                req.waiting = True
                return None
            req.waiting = False
            req.instance = decision.instance_id
            self._record(req, decision, now)
            assert req.instance is not None
            if decision.kind is DecisionKind.START:
                inst = self.router.group.instance(req.instance)
                self._pending_starts[req.instance] = now
                self._spawned_at[req.instance] = now
                self.meter.start(req.instance, memory_mb=inst.memory_mb, now=now)
                self.counters.cold_starts += 1
                self._bind_unbound(replicas, now)
            elif routed.loads:
                self.counters.model_loads += 1
                self.counters.evictions += len(decision.evict)
            return self._target(req, now)

    def _target(self, req: _Request, now: float) -> str | None:
        assert req.instance is not None
        replica = self._replica_of.get(req.instance)
        if replica is not None and req.sent_at is None:
            req.sent_at = now
        return replica

    def completed(self, key: str, now: float) -> None:
        """Request ``key`` finished on its replica (served, failed or cancelled)."""
        with self._lock:
            req = self._requests.pop(key, None)
            if req is None:
                return
            self._by_rid.pop(req.rid, None)
            if req.waiting:
                self.router.cancel(req.rid)
                return
            if req.instance is None or req.instance not in self._replica_of:
                if req.instance is not None and req.instance in self._pending_starts:
                    self._abandon_start(req, now)
                return
            self._finish(req, now)

    def cancel(self, key: str, now: float) -> None:
        """The caller gave up on request ``key`` before Ray Serve sent it anywhere."""
        with self._lock:
            req = self._requests.get(key)
            if req is None:
                return
            if req.waiting or req.instance is None:
                self._requests.pop(key, None)
                self._by_rid.pop(req.rid, None)
                if req.waiting:
                    self.router.cancel(req.rid)
                return
        self.completed(key, now)

    def _finish(self, req: _Request, now: float) -> None:
        assert req.instance is not None
        group = self.router.group
        inst = group.instance(req.instance)
        exec_s: float | None = None
        if inst.is_loading(req.model):
            ready = self.router.model_loaded(req.instance, req.model, now)
            exec_s = _NOT_MEASURED  # this request carried the load: its time is not split
            self._release_abandoned(ready.run, now)
        running = inst.running_since(req.rid)
        if running is None:  # its instance is up but its model's load did not end
            self._abandon(req)
            return
        if exec_s is None:
            began = max(running, req.sent_at if req.sent_at is not None else running)
            exec_s = max(0.0, now - began)
        self.router.request_done(req.rid, now, exec_s=exec_s)
        self.counters.served += 1

    def _abandon(self, req: _Request) -> None:
        """A request that cannot leave the group yet: it goes when it would have run."""
        req.abandoned = True
        self._by_rid[req.rid] = req

    def _abandon_start(self, req: _Request, now: float) -> None:
        """A request held for an instance still starting went away; when every request of
        that instance did, the start is given up (its replica, if it comes, joins fresh)."""
        assert req.instance is not None
        self._abandon(req)
        inst = self.router.group.instance(req.instance)
        live = [
            rid
            for rid in inst.request_ids()
            if (r := self._by_rid.get(rid)) is not None and not r.abandoned
        ]
        if not live:
            self._lose(req.instance, now, scaled_down=True)

    def _release_abandoned(self, rids: Sequence[int], now: float) -> None:
        for rid in rids:
            req = self._by_rid.get(rid)
            if req is not None and req.abandoned:
                del self._by_rid[rid]
                self.router.request_done(rid, now, exec_s=_NOT_MEASURED)

    # -- replicas ------------------------------------------------------------------------------

    def sync(self, replicas: Sequence[ReplicaView], now: float) -> None:
        """Ray Serve's replicas are now ``replicas``: one that is gone leaves the group at
        once (its billing stops now, not at the next request), a new one takes a start that
        waits for it."""
        with self._lock:
            self._sync(replicas, now)

    def expire(self, now: float) -> int:
        """Give up the starts whose replica has not come within ``start_timeout_s`` (their
        requests are routed again): without traffic nothing else looks, and a start that waits
        for ever keeps the autoscaler from scaling down.  The starts still waiting."""
        with self._lock:
            for iid, since in list(self._pending_starts.items()):
                if now - since > self.config.start_timeout_s:
                    self.counters.failed_starts += 1
                    self._lose(iid, now, scaled_down=False)
            return len(self._pending_starts)

    @property
    def starts_waiting(self) -> int:
        """Instances the policy started that wait for a replica (none was spare): what the
        autoscaler may add, and nothing more (:class:`~sealserve.platform.ray.PackerAutoscaler`)."""
        with self._lock:
            return len(self._pending_starts)

    def _sync(self, replicas: Sequence[ReplicaView], now: float) -> None:
        current = {r.replica_id: r for r in replicas}
        for replica, iid in list(self._instance_of.items()):
            if replica not in current:
                self._lose(iid, now, scaled_down=True)
        for view in current.values():
            self._note_stats(view, now)
        for iid, since in list(self._pending_starts.items()):
            if now - since > self.config.start_timeout_s:
                self.counters.failed_starts += 1
                self._lose(iid, now, scaled_down=False)
        self._bind_unbound(replicas, now)

    def _bind_unbound(self, replicas: Sequence[ReplicaView], now: float) -> None:
        """Give each instance the policy started (oldest first) a replica it does not use."""
        for view in replicas:
            if not self._pending_starts:
                return
            if view.replica_id in self._instance_of:
                continue
            iid = next(iter(self._pending_starts))
            del self._pending_starts[iid]
            self._replica_of[iid] = view.replica_id
            self._instance_of[view.replica_id] = iid
            self._generation[view.replica_id] = view.routing_stats.get("runtime_generation")
            self.router.instance_ready(iid, now)

    def _note_stats(self, view: ReplicaView, now: float) -> None:
        stats = view.routing_stats
        if not stats:
            return
        self._stats[view.replica_id] = stats
        iid = self._instance_of.get(view.replica_id)
        if iid is None:
            return
        generation = stats.get("runtime_generation")
        known = self._generation.get(view.replica_id)
        if known is not None and generation is not None and generation != known:
            # The replica's runtime restarted: its models are gone.  The instance leaves the
            # group and the replica comes back as a fresh one.
            self.counters.runtime_failures += 1
            self._lose(iid, now, scaled_down=False)
            return
        self._generation[view.replica_id] = generation

    def _lose(self, iid: int, now: float, *, scaled_down: bool) -> None:
        replica = self._replica_of.pop(iid, None)
        if replica is not None:
            self._instance_of.pop(replica, None)
            self._generation.pop(replica, None)
        self._pending_starts.pop(iid, None)
        self._spawned_at.pop(iid, None)
        if iid not in {i.id for i in self.router.group.instances}:
            return
        had_requests = self.router.group.instance(iid).in_flight > 0
        self.meter.stop(iid, now=now)
        if scaled_down and not had_requests:
            self.counters.scaled_to_zero += 1
        else:
            self.counters.instances_replaced += 1
        for lost in self.router.instance_failed(iid, now):
            req = self._by_rid.get(lost.request_id)
            if req is None:
                continue
            if req.abandoned or req.key not in self._requests:
                self.router.cancel(req.rid)
                self._by_rid.pop(req.rid, None)
                continue
            req.instance = None
            req.sent_at = None
            req.waiting = True
            self.counters.rerouted += 1

    # -- reading -------------------------------------------------------------------------------

    def _record(self, req: _Request, decision: Any, now: float) -> None:
        record = self._log_decision(req.rid, decision, req.waits, now)
        if decision.kind is not DecisionKind.WAIT and req.request_id is not None:
            self._by_request_id[req.request_id] = record
            while len(self._by_request_id) > 4 * self.config.decision_history:
                self._by_request_id.popitem(last=False)

    def decision_for(self, request_id: str) -> DecisionRecord | None:
        """The decision that placed the request with this (client) request id."""
        with self._lock:
            return self._by_request_id.get(request_id)

    def instance_for(self, replica_id: str) -> int | None:
        """The FnPacker instance a replica is, if it is in the group."""
        with self._lock:
            return self._instance_of.get(replica_id)

    def nodes(self) -> dict[int, str | None]:
        """The Ray node (its ``sealserve-node`` label, or ``None``) of each instance's replica,
        as its routing stats last reported it."""
        with self._lock:
            return {
                iid: _str_or_none(self._stats.get(replica, {}).get("node"))
                for iid, replica in self._replica_of.items()
            }

    def lost(self, instance_id: int) -> bool:
        """Whether the instance has left the group (its replica is gone, or given up)."""
        with self._lock:
            return instance_id not in {i.id for i in self.router.group.instances}

    def replica_for(self, instance_id: int) -> str | None:
        with self._lock:
            return self._replica_of.get(instance_id)

    def note_failure(self) -> None:
        """A request the caller sent came back with an error."""
        with self._lock:
            self.counters.failed += 1
            self.counters.served = max(0, self.counters.served - 1)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(1 for r in self._requests.values() if r.waiting)

    def snapshot(self, now: float) -> PlatformStats:
        """The group as the router sees it, with each replica's last reported stats."""
        with self._lock:
            instances = []
            for inst in self.router.group.instances:
                replica = self._replica_of.get(inst.id)
                stats = self._stats.get(replica, {}) if replica is not None else {}
                spawned = self._spawned_at.get(inst.id, now)
                instances.append(
                    self._instance_stats(
                        inst,
                        now,
                        spawned_at=spawned,
                        url=None if replica is None else f"ray-replica://{replica}",
                        pid=_int_or_none(stats.get("pid")),
                        runtime_pid=_int_or_none(stats.get("runtime_pid")),
                    )
                )
            config = dataclasses.asdict(self.config)
            config["platform"] = "ray"
            return PlatformStats(
                policy=self.policy_name,
                instances=tuple(instances),
                waiting=sum(1 for r in self._requests.values() if r.waiting),
                in_flight=len(self._requests),
                counters=self.counters.to_json(),
                gb_seconds=self.meter.gb_seconds(now),
                instance_seconds=self.meter.instance_seconds(now),
                decisions=dict(self.decision_counts),
                recent=tuple(self.decisions),
                config=config,
            )

    def __repr__(self) -> str:
        return (
            f"ReplicaPacker(policy={self.policy_name!r}, replicas={len(self._instance_of)}, "
            f"requests={len(self._requests)})"
        )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
