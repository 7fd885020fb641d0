"""One sealserve instance as a Ray Serve replica.

A replica of the ``SealedInstance`` deployment starts one instance on its node exactly as the
local platform does (:class:`~sealserve.platform.LocalBackend`): the untrusted host
``sealserve instance serve`` as a subprocess on 127.0.0.1, whose sealed runtime the node's TEE
platform daemon launches and measures.  The replica is untrusted too: it relays sealed inputs
and outputs between Ray and the host, and sees ids, sizes and timings only.

A graceful stop (``__del__``, when Ray Serve scales down or deletes the app) stops the host,
which closes its runtime; a replica process that dies without one (Ray kills it after a failed
health check, its node loses its raylet) takes its host with it, by the local backend's
lifeline.

Errors travel as the host's error answers (status and JSON body, :mod:`sealserve.instance`'s
mapping), so the caller raises the same exception the local platform would, retryable where
it is.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Final

from sealserve._log import get_logger
from sealserve.errors import PlatformError
from sealserve.instance import InstanceClient
from sealserve.platform import InstanceHealth, LocalBackend, LocalOptions
from sealserve.platform.ray._autoscale import LAST_USED_METRIC
from sealserve.protocol import HostError, error_for_exception

__all__ = ["SealedInstance"]

_log = get_logger(__name__)
_ID: Final = 0
_UNHEALTHY_AFTER: Final = 3
#: The Ray node label that names a node for ``{node}`` in ``RayOptions.tee_socket``.
NODE_LABEL: Final = "sealserve-node"


class SealedInstance:
    """The deployment class (``serve.deployment`` is applied by
    :func:`~sealserve.platform.ray.build_application`); ``config`` is
    :meth:`RayOptions.replica_config`."""

    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        self._replica_id = _replica_id()
        self._node = _node_label()
        run_dir = Path(config["run_dir"]) / f"replica-{self._replica_id}"
        concurrency = int(config["concurrency"])
        self._backend = LocalBackend(
            LocalOptions(
                store_dir=str(config["store_dir"]),
                keyservice_url=str(config["keyservice_url"]),
                tee_socket=node_path(str(config["tee_socket"]), self._node),
                platform_key_file=Path(config["platform_key_file"]),
                keyservice_measurement=str(config["keyservice_measurement"]),
                run_dir=run_dir,
                memory_factor=float(config["memory_factor"]),
                threads=int(config["threads"]),
                max_body_mb=int(config["max_body_mb"]),
                log_level=str(config["log_level"]),
                io_threads=max(4, 2 * concurrency),
            )
        )
        self._in_flight = 0
        self._served = 0
        self._failed_checks = 0
        self._last_used = time.time()
        began = time.monotonic()
        try:
            self._info = await asyncio.wait_for(
                self._backend.start(
                    _ID,
                    memory_mb=int(config["memory_mb"]),
                    budget_mb=float(config["budget_mb"]),
                    concurrency=concurrency,
                ),
                float(config["start_timeout_s"]),
            )
        except BaseException:
            await self._backend.close()
            raise
        self._client = InstanceClient(self._info.url, timeout_s=10.0).open()
        self.cold_start_s = time.monotonic() - began
        _log.event(
            "ray_replica.ready",
            replica=self._replica_id,
            url=self._info.url,
            seconds=round(self.cold_start_s, 3),
        )

    async def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray,
        deadline_ms: int,
    ) -> dict[str, Any]:
        """Serve one sealed request: ``{"status": 200, "sealed_output", "timings",
        "replica_id"}``, or ``{"status", "error"}`` (the host's error answer)."""
        self._in_flight += 1
        try:
            outcome = await self._backend.infer(
                _ID,
                model_id=model_id,
                user_id=user_id,
                request_id=request_id,
                sealed_input=sealed_input,
                deadline_ms=deadline_ms,
            )
        except Exception as exc:
            error = error_for_exception(exc)
            return {"status": error.status, "error": _body(error), "replica_id": self._replica_id}
        finally:
            self._in_flight -= 1
            self._served += 1
            self._last_used = time.time()
        return {
            "status": 200,
            "sealed_output": outcome.sealed_output,
            "timings": dict(outcome.timings),
            "replica_id": self._replica_id,
            "cold_start_ms": round(self.cold_start_s * 1000, 3),
        }

    async def check_health(self) -> None:
        """Ray Serve's health check: a host that exited or whose runtime gave up fails it at
        once, one that does not answer after three checks in a row (Ray replaces it)."""
        health = await self._backend.health(_ID)
        if health in (InstanceHealth.READY, InstanceHealth.RESTARTING):
            self._failed_checks = 0
            return
        if health is InstanceHealth.UNREACHABLE:
            self._failed_checks += 1
            if self._failed_checks < _UNHEALTHY_AFTER:
                return
        raise PlatformError(f"the instance host is {health.value}; replace this replica")

    async def record_routing_stats(self) -> dict[str, Any]:
        """What the router may know of this instance (ids, counts; nothing secret)."""
        try:
            stats = await asyncio.to_thread(self._client.stats)
        except Exception:  # a host that does not answer now: report what the replica knows
            stats = {}
        supervisor = stats.get("supervisor") or {}
        runtime = stats.get("runtime") or {}
        models = (runtime.get("models") or {}).get("models") or []
        return {
            "replica_id": self._replica_id,
            "node": self._node,
            "pid": self._info.pid,
            "runtime_pid": supervisor.get("runtime_pid"),
            "runtime_generation": supervisor.get("generation"),
            "models": [m["model_id"] for m in models if m.get("state") == "ready"],
            "in_flight": self._in_flight,
            "served": self._served,
            "last_used": self._last_used if self._in_flight == 0 else time.time(),
        }

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The custom metric :class:`~sealserve.platform.ray.PackerAutoscaler` scales by."""
        return {LAST_USED_METRIC: time.time() if self._in_flight else self._last_used}

    async def __del__(self) -> None:
        """Ray Serve's graceful stop: stop the host (it closes its runtime)."""
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        backend = getattr(self, "_backend", None)
        if backend is not None:
            await backend.close()


def _body(error: HostError) -> bytes:
    doc = {"error": {"code": error.code, "message": error.message, "retryable": error.retryable}}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def node_path(template: str, node: str | None) -> Path:
    """A node's path: ``{node}`` in ``template`` is the node's ``sealserve-node`` label (several
    Ray nodes on one machine, each with its own TEE daemon); a template without it is the same
    path on every node."""
    if "{node}" not in template:
        return Path(template)
    if node is None:
        raise PlatformError(
            f"the TEE socket {template!r} names {{node}}, but this Ray node has no "
            f"{NODE_LABEL!r} label (ray start --labels {NODE_LABEL}=NAME)"
        )
    return Path(template.replace("{node}", node))


def _node_label() -> str | None:
    import ray

    labels = ray.get_runtime_context().get_node_labels()
    value = labels.get(NODE_LABEL)
    return str(value) if value else None


def _replica_id() -> str:
    from ray import serve

    return str(serve.get_replica_context().replica_id.unique_id)
