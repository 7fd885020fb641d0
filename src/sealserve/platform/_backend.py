"""The instance backend interface: where the local platform's instances run.

A backend starts instances, routes a request (or a model load) to one, checks its health,
stops it, and reports what it knows of it.  Backends make no decisions: the
:class:`~sealserve.platform.PlatformController` does, and the
:class:`~sealserve.platform.Platform` driver carries them out on a backend.

One backend implements it: :class:`~sealserve.platform.LocalBackend`, each instance a host +
runtime process pair on this machine (tests add fakes of the same interface).  The other
platforms do not plug in here, because they own what a backend would do:

* Ray Serve (:mod:`sealserve.platform.ray`) starts, health-checks and scales its replicas
  itself and routes with FnPacker as its request router, so its ``RayPlatform`` replaces the
  whole :class:`~sealserve.platform.Platform` (it is the gateway's
  :class:`~sealserve.gateway.InferenceBackend`); each replica runs its one instance with a
  ``LocalBackend`` of its own.
* OpenWhisk (:mod:`sealserve.platform.openwhisk`) runs the instance host itself as a
  blackbox action (``/init``, ``/run``); OpenWhisk's controller is the platform.

Every call is a coroutine; a backend may do its blocking work on threads.  Failures are
sealserve's exceptions with ``retryable`` set as the instance host sets it
(:class:`~sealserve.errors.RuntimeUnavailable`, :class:`~sealserve.errors.AccessDenied`, ...);
a backend that cannot reach or start an instance raises :class:`~sealserve.errors.PlatformError`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["InferOutcome", "InstanceBackend", "InstanceHealth", "InstanceInfo"]


class InstanceHealth(enum.Enum):
    """What a health check found."""

    #: The host answers and its runtime is ready.
    READY = "ready"
    #: The host answers; its runtime is (re)starting after a crash (the host restarts it).
    RESTARTING = "restarting"
    #: The host process is alive but did not answer.
    UNREACHABLE = "unreachable"
    #: The host gave up restarting its runtime: replace the instance.
    FAILED = "failed"
    #: The host process exited.
    GONE = "gone"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InstanceInfo:
    """What a backend knows of a started instance (no secret: addresses, pids, measurement)."""

    instance_id: int
    url: str
    pid: int | None = None
    runtime_pid: int | None = None
    measurement: str | None = None
    #: The cold start's stages (ms) as the instance reported them (``sandbox_start``,
    #: ``runtime_start``).
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: What the instance used when it was last measured (MB), when the backend measures it.
    resident_mb: float | None = None
    #: The runtime generation the platform sends requests to directly (its data link), if any.
    data_link: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "url": self.url,
            "pid": self.pid,
            "runtime_pid": self.runtime_pid,
            "measurement": self.measurement,
            "timings": dict(self.timings),
            "resident_mb": None if self.resident_mb is None else round(self.resident_mb, 1),
            "data_link": self.data_link,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class InferOutcome:
    """A served request: the sealed output and the instance's stage timings (ms)."""

    sealed_output: bytes
    timings: Mapping[str, float]


@runtime_checkable
class InstanceBackend(Protocol):
    """Start, use, check and stop instances (see the module docstring)."""

    async def start(
        self, instance_id: int, *, memory_mb: int, budget_mb: float, concurrency: int
    ) -> InstanceInfo:
        """Start instance ``instance_id`` of ``memory_mb`` (its size: its sandbox's memory,
        what it is billed) whose runtime holds at most ``budget_mb`` of models, and return
        once it serves (a cold start)."""
        ...

    async def load(
        self, instance_id: int, *, model_id: str, user_id: str, timeout_s: float
    ) -> Mapping[str, float]:
        """Make ``model_id`` resident there with ``user_id``'s keys; the load's stages (ms)."""
        ...

    async def evict(self, instance_id: int, *, model_id: str) -> bool:
        """Drop ``model_id`` from the instance's memory (when idle); whether it was there."""
        ...

    async def infer(
        self,
        instance_id: int,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray,
        deadline_ms: int,
    ) -> InferOutcome:
        """Serve one sealed request on the instance."""
        ...

    async def health(self, instance_id: int) -> InstanceHealth:
        """Check the instance (cheap; called every few seconds)."""
        ...

    async def stop(self, instance_id: int) -> None:
        """Stop the instance (gracefully, then by force); idempotent."""
        ...

    def describe(self, instance_id: int) -> InstanceInfo | None:
        """What the backend knows of a started instance, if it is still running."""
        ...

    async def close(self) -> None:
        """Stop every instance and release the backend."""
        ...
