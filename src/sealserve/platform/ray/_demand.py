"""What the FnPacker router asks of Ray Serve's autoscaler, published where it can read it.

Ray Serve's autoscaling policy runs in the Serve controller and sees the replicas' metrics
and the requests queued at the handles, not the router's state.  A queued request is not a
request for a replica: FnPacker may hold it because a slot frees soon, or because the group is
at its maximum.  So each process whose router routes for a deployment publishes the one
number the autoscaler needs, the instances the policy started that wait for a replica
(:attr:`ReplicaPacker.starts_waiting`), in Ray's internal key-value store (the GCS), under
``DEMAND_PREFIX + "app/deployment/" + process``: at once when it changes, and every
``heartbeat_s`` so that a gateway that is gone stops counting
(:data:`~sealserve.platform.ray._autoscale.DEMAND_TTL_S`).  At each heartbeat ``refresh``
(the packer's :meth:`~sealserve.platform.ray.ReplicaPacker.expire`) gives the value as of now:
a start whose replica never came is given up even when no request arrives.

The writes happen on a thread of their own: the router's event loop never waits for the GCS.
The value is a count and a time; nothing secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from sealserve._log import get_logger
from sealserve.platform.ray._autoscale import DEMAND_NAMESPACE, DEMAND_PREFIX

__all__ = ["DemandBoard"]

_log = get_logger(__name__)
_JOIN_S: Final = 2.0

#: ``write(key, value)``; ``value`` ``None`` deletes the key.
Writer = Callable[[str, bytes | None], None]


def _kv_write(key: str, value: bytes | None) -> None:
    from ray.experimental import internal_kv

    if value is None:
        internal_kv._internal_kv_del(key, namespace=DEMAND_NAMESPACE)
    else:
        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=DEMAND_NAMESPACE)


class DemandBoard:
    """One process's demand for one deployment (see the module docstring); thread-safe."""

    def __init__(
        self,
        app_name: str,
        deployment_name: str,
        *,
        heartbeat_s: float = 5.0,
        write: Writer | None = None,
        clock: Callable[[], float] = time.time,
        refresh: Callable[[], int] | None = None,
    ) -> None:
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s!r}")
        self.key = (
            f"{DEMAND_PREFIX}{app_name}/{deployment_name}/{socket.gethostname()}-{os.getpid()}"
        )
        self._heartbeat_s = heartbeat_s
        self._write = write or _kv_write
        self._clock = clock
        self._refresh = refresh
        self._lock = threading.Lock()
        self._value = 0
        self._published: int | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def note(self, starts_waiting: int) -> None:
        """The router's current demand; published at once if it changed."""
        with self._lock:
            if self._stopping:
                return
            self._value = starts_waiting
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sealserve-demand", daemon=True
                )
                self._thread.start()
            if starts_waiting != self._published:
                self._wake.set()

    @property
    def published(self) -> int | None:
        with self._lock:
            return self._published

    def _run(self) -> None:
        while True:
            self._wake.wait(self._heartbeat_s)
            self._wake.clear()
            if self._refresh is not None:  # each heartbeat: the value as of now
                try:
                    fresh = self._refresh()
                except Exception as exc:  # the packer's state: say so, keep the last value
                    _log.event("ray_demand.refresh_failed", error=type(exc).__name__)
                else:
                    with self._lock:
                        self._value = fresh
            with self._lock:
                if self._stopping:
                    return
                value = self._value
            doc = {"starts_waiting": value, "at": self._clock()}
            try:
                self._write(self.key, json.dumps(doc).encode())
            except Exception as exc:  # the GCS is away: the next change or heartbeat retries
                _log.event("ray_demand.unpublished", error=type(exc).__name__)
                continue
            with self._lock:
                self._published = value

    def close(self) -> None:
        """Stop publishing and remove this process's record (bounded: the GCS may be gone)."""
        with self._lock:
            self._stopping = True
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is None:
            return
        thread.join(_JOIN_S)
        remover = threading.Thread(target=self._remove, name="sealserve-demand-remove", daemon=True)
        remover.start()
        remover.join(_JOIN_S)

    def _remove(self) -> None:
        with contextlib.suppress(Exception):
            self._write(self.key, None)

    def __repr__(self) -> str:
        return f"DemandBoard({self.key!r}, published={self._published!r})"
