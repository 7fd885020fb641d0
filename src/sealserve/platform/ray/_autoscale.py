"""FnPacker's autoscaling policy for Ray Serve: replicas when the router needs them.

Ray Serve's default policy scales on requests per replica (``target_ongoing_requests``), which
would start a replica for every few requests and undo what packing saves.  On sealserve the
FnPacker router decides where requests go, and an instance is added only when the router
*holds* requests: the policy wants an instance it does not have (a ``START``), or every
instance is full.  Ray Serve counts such requests as queued at the handle
(``total_queued_requests``), so:

* no replica and requests queued -> one replica (Ray Serve's router asks FnPacker nothing
  while no replica runs, so the first decision is a ``START`` that takes this one);
* the router's demand (the instances FnPacker started that wait for a replica, which each
  gateway publishes in Ray's internal key-value store, see :data:`DEMAND_PREFIX`) -> that
  many replicas more than run, up to ``max_replicas``: a request held because the policy
  chose to wait (a slot frees soon, the group is at its maximum) starts no replica;
* no demand                     -> one replica fewer for each replica that has served nothing
  for ``keep_alive_s`` (every replica reports when it was last used, see
  :data:`LAST_USED_METRIC`); with ``min_replicas`` 0 the deployment scales to zero;
* no gateway publishes (another caller's handle, an older gateway) -> the queue at the
  handles decides: one replica more while requests are queued; Ray reports the queue as a
  maximum over its look-back window, so after a scale-up the queue it reports may be the one
  that scale-up served: no further replica is added until ``cooldown_s`` (the look-back
  window) has passed since it.

Ray Serve wraps the policy with the deployment's bounds and delays, and it picks *which*
replica stops (pending ones first, then the newest): not necessarily the idle one.  The router
follows whatever Ray Serve does (docs/platforms.md).

This module is pickled by value into the Serve controller: it imports nothing of sealserve.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["DEMAND_NAMESPACE", "DEMAND_PREFIX", "DEMAND_TTL_S", "LAST_USED_METRIC",
           "PackerAutoscaler", "demand_from"]  # fmt: skip

#: The custom autoscaling metric every replica records: Unix time it last served a request
#: (now, while it serves one).  Aggregated with ``max`` over the look-back window.
LAST_USED_METRIC: Final = "sealserve_last_used"
#: Ray's internal key-value namespace and key prefix (``PREFIX + app/deployment/``, then one
#: key per publishing process) of the router's demand: JSON ``{"starts_waiting", "at"}``.
DEMAND_NAMESPACE: Final = "sealserve"
DEMAND_PREFIX: Final = "demand/"
#: A demand not refreshed for this long is a gateway that is gone: it is not counted.
DEMAND_TTL_S: Final = 30.0
#: How long the policy reuses what it read (Serve calls it every control loop, 0.1 s).
_DEMAND_READ_EVERY_S: Final = 0.5


def demand_from(records: Mapping[str, bytes | None], now: float) -> int | None:
    """The instances every live gateway waits for (``None``: no gateway publishes); pure.

    ``records`` are the raw values under one deployment's prefix; a record older than
    :data:`DEMAND_TTL_S` or unreadable is not counted (every byte here came from outside).
    """
    total: int | None = None
    for raw in records.values():
        try:
            doc = json.loads(raw or b"")
            waiting, at = doc["starts_waiting"], float(doc["at"])
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(waiting, bool) or not isinstance(waiting, int) or waiting < 0:
            continue
        if not math.isfinite(at) or now - at > DEMAND_TTL_S:
            continue
        total = (total or 0) + waiting
    return total


def _read_demand_records(prefix: str) -> dict[str, bytes | None]:
    """Every record under ``prefix`` in Ray's internal key-value store (the GCS)."""
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list(prefix, namespace=DEMAND_NAMESPACE)
    return {
        k.decode() if isinstance(k, bytes) else str(k): internal_kv._internal_kv_get(
            k, namespace=DEMAND_NAMESPACE
        )
        for k in keys
    }


class PackerAutoscaler:
    """A class-callable Ray Serve autoscaling policy (see the module docstring)."""

    def __init__(
        self,
        *,
        keep_alive_s: float,
        max_replicas: int,
        cooldown_s: float = 0.0,
        read_records: Callable[[str], Mapping[str, bytes | None]] | None = None,
    ) -> None:
        if not keep_alive_s > 0 or math.isinf(keep_alive_s):
            raise ValueError(f"keep_alive_s must be a finite number > 0, got {keep_alive_s!r}")
        if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or max_replicas < 1:
            raise ValueError(f"max_replicas must be an int >= 1, got {max_replicas!r}")
        if not cooldown_s >= 0 or math.isinf(cooldown_s):
            raise ValueError(f"cooldown_s must be a finite number >= 0, got {cooldown_s!r}")
        self.cooldown_s = float(cooldown_s)
        self.keep_alive_s = float(keep_alive_s)
        self.max_replicas = max_replicas
        self._read_records = read_records or _read_demand_records
        self._demand: tuple[float, int | None] | None = None

    def decide(
        self,
        *,
        current: int,
        target: int,
        queued: float,
        last_used: Mapping[Any, float],
        now: float,
        last_scale_up: float | None = None,
        demand: int | None = None,
    ) -> int:
        """The replicas wanted, from what Ray Serve reports and the routers' ``demand``
        (``None``: no router publishes one); pure."""
        top = max(self.max_replicas, current)
        if current == 0:
            return max(target, 1) if queued > 0 else 0
        if demand is not None:
            if demand > 0:
                return min(max(target, current + demand), top)
            idle = sum(1 for at in last_used.values() if now - at >= self.keep_alive_s)
            return max(0, current - idle)
        if queued > 0:
            if target > current:
                return target  # a replica is already on its way
            if last_scale_up is not None and now - last_scale_up < self.cooldown_s:
                return current  # the queue reported may be the one the last scale-up served
            return min(current + 1, top)
        idle = sum(1 for at in last_used.values() if now - at >= self.keep_alive_s)
        return max(0, current - idle)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        last_used = metrics.get(LAST_USED_METRIC) or {}
        now = ctx.current_time if ctx.current_time is not None else time.time()
        running = set(ctx.running_replicas)
        desired = self.decide(
            current=int(ctx.current_num_replicas),
            target=int(ctx.target_num_replicas),
            queued=float(ctx.total_queued_requests or 0.0),
            last_used={r: float(v) for r, v in last_used.items() if r in running},
            now=float(now),
            last_scale_up=ctx.last_scale_up_time,
            demand=self._current_demand(f"{ctx.app_name}/{ctx.deployment_name}", float(now)),
        )
        return desired, {}

    def _current_demand(self, deployment: str, now: float) -> int | None:
        """The routers' demand, read at most every 0.5 s; ``None`` if it cannot be read."""
        if self._demand is not None and 0 <= now - self._demand[0] < _DEMAND_READ_EVERY_S:
            return self._demand[1]
        try:
            demand = demand_from(self._read_records(f"{DEMAND_PREFIX}{deployment}/"), now)
        except Exception:  # the GCS does not answer: scale on the queue, as without a router
            demand = None
        self._demand = (now, demand)
        return demand

    def __repr__(self) -> str:
        return (
            f"PackerAutoscaler(keep_alive_s={self.keep_alive_s}, max_replicas={self.max_replicas})"
        )
