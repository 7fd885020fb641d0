"""FnPacker's autoscaling policy for Ray Serve: replicas when the router needs them.

Ray Serve's default policy scales on requests per replica (``target_ongoing_requests``), which
would start a replica for every few requests and undo what packing saves.  On sealserve the
FnPacker router decides where requests go, and an instance is added only when the router
*holds* requests: the policy wants an instance it does not have (a ``START``), or every
instance is full.  Ray Serve counts such requests as queued at the handle
(``total_queued_requests``), so:

* requests queued at the router  -> one more replica (one at a time), up to
  ``max_replicas``; Ray reports the queue as a maximum over its look-back window, so after a
  scale-up the queue it reports may be the one that scale-up served: no further replica is
  added until ``cooldown_s`` (the look-back window) has passed since it;
* nothing queued                 -> one replica fewer for each replica that has served nothing
  for ``keep_alive_s`` (every replica reports when it was last used, see
  :data:`LAST_USED_METRIC`); with ``min_replicas`` 0 the deployment scales to zero.

Ray Serve wraps the policy with the deployment's bounds and delays, and it picks *which*
replica stops (pending ones first, then the newest): not necessarily the idle one.  The router
follows whatever Ray Serve does (docs/platforms.md).

This module is pickled by value into the Serve controller: it imports nothing of sealserve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["LAST_USED_METRIC", "PackerAutoscaler"]

#: The custom autoscaling metric every replica records: Unix time it last served a request
#: (now, while it serves one).  Aggregated with ``max`` over the look-back window.
LAST_USED_METRIC: Final = "sealserve_last_used"


class PackerAutoscaler:
    """A class-callable Ray Serve autoscaling policy (see the module docstring)."""

    def __init__(self, *, keep_alive_s: float, max_replicas: int, cooldown_s: float = 0.0) -> None:
        if not keep_alive_s > 0 or math.isinf(keep_alive_s):
            raise ValueError(f"keep_alive_s must be a finite number > 0, got {keep_alive_s!r}")
        if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or max_replicas < 1:
            raise ValueError(f"max_replicas must be an int >= 1, got {max_replicas!r}")
        if not cooldown_s >= 0 or math.isinf(cooldown_s):
            raise ValueError(f"cooldown_s must be a finite number >= 0, got {cooldown_s!r}")
        self.cooldown_s = float(cooldown_s)
        self.keep_alive_s = float(keep_alive_s)
        self.max_replicas = max_replicas

    def decide(
        self,
        *,
        current: int,
        target: int,
        queued: float,
        last_used: Mapping[Any, float],
        now: float,
        last_scale_up: float | None = None,
    ) -> int:
        """The replicas wanted, from what Ray Serve reports (pure)."""
        if queued > 0:
            if target > current:
                return target  # a replica is already on its way
            if last_scale_up is not None and now - last_scale_up < self.cooldown_s:
                return current  # the queue reported may be the one the last scale-up served
            return min(current + 1, max(self.max_replicas, current))
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
        )
        return desired, {}

    def __repr__(self) -> str:
        return (
            f"PackerAutoscaler(keep_alive_s={self.keep_alive_s}, max_replicas={self.max_replicas})"
        )
