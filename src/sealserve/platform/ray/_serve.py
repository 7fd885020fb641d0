"""Connect to Ray, deploy the sealed-instance deployment with FnPacker's router, remove it.

::

    connect()                                   # a local Ray (or connect(address="ray://..."))
    handle = deploy(options)                    # the SealedInstance deployment, FnPacker routing
    platform = RayPlatform(handle, options=options)
    ...
    stop(options, started=...)                  # bounded: see below

Ray Serve runs without its HTTP proxy here: the gateway (``sealserve platform ray serve``)
sends requests through the deployment handle, so FnPacker's router runs in the gateway's
process and the gateway reports its decisions.

:func:`stop` is the stop path of the gateway and the tests: it deletes the application, stops
Ray Serve and leaves Ray, each step with a bound (:func:`sealserve._stopping.bounded`): a Serve
controller that is stopped or busy, a replica that does not end, a GCS that is gone cannot
make it hang.  For a local Ray that :func:`connect` started, whatever is still alive after the
steps (Ray's processes, the workers and replicas under them, their instance hosts) is killed
and named in the log.  Of a remote cluster it only leaves: its processes are not ours.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sealserve._log import get_logger
from sealserve._stopping import bounded, children, descendants, describe, kill_named, wait_gone
from sealserve.errors import PlatformError
from sealserve.platform.ray._options import RayOptions
from sealserve.platform.ray._registry import forget_packers

__all__ = ["build_application", "connect", "deploy", "disconnect", "stop", "undeploy"]

_log = get_logger(__name__)
#: The processes a local Ray started by :func:`connect` runs as (its direct children of this
#: process: GCS, raylet, ...); everything under them is Ray's too.
_local_ray: set[int] = set()
#: What :func:`stop` leaves for killing: processes get this long to end after Ray stopped.
_GONE_S: Final = 3.0

#: How often handles and replicas push the numbers the autoscaler reads (Ray's default is
#: 10 s, which delays every scale-up from zero by as much).  Read when Ray Serve is imported:
#: set before :func:`connect` or in the environment of a cluster's nodes.
AUTOSCALING_PUSH_ENV: Final = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2",
}


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    temp_dir: Path | None = None,
    object_store_mb: int | None = None,
) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local one; start Ray Serve
    (without an HTTP proxy) if it does not run.  Returns whether a local Ray was started."""
    for name, value in AUTOSCALING_PUSH_ENV.items():
        os.environ.setdefault(name, value)
    _no_auto_connect()
    import ray
    from ray import serve

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
        if address is None:
            if num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            if temp_dir is not None:
                kwargs["_temp_dir"] = str(temp_dir)
            if object_store_mb is not None:
                kwargs["object_store_memory"] = object_store_mb << 20
        else:
            kwargs = {"address": address, "logging_level": "warning"}
        before = children(os.getpid())
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PlatformError(
                f"could not reach Ray at {address or 'a new local cluster'}: {exc}"
            ) from exc
        if address is None:
            _local_ray.clear()
            _local_ray.update(children(os.getpid()) - before)
    serve.start(proxy_location="Disabled")
    _log.event("ray.connected", address=address or "local")
    return address is None


def _no_auto_connect() -> None:
    """Make Ray's API calls in this process fail when it is not connected, instead of starting
    a new local Ray.

    Ray starts a local cluster on the first ``ray.get`` or actor call of a process that is not
    connected.  After :func:`stop` left Ray, a thread that outlived it (a Serve handle's router
    pushing its metrics every second, a stop step that timed out) would do that: a stray Ray
    that nobody stops, racing the next :func:`connect` ("ray.init twice").  The switch is read
    when Ray is imported, so it is also set on the module if Ray is already loaded.
    """
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    hook = sys.modules.get("ray._private.auto_init_hook")
    if hook is not None:
        setattr(hook, "enable_auto_connect", False)  # noqa: B010 (a module's flag)


def _shutdown_handles() -> None:
    """Stop the request routers of the Serve handles this process holds (each runs a thread
    that talks to the Serve controller: its metrics, its replicas' updates)."""
    from ray.serve import context

    client = context._global_client
    if client is not None:
        client.shutdown_cached_handles()  # type: ignore[no-untyped-call]


def build_application(options: RayOptions) -> Any:
    """The Ray Serve application: the ``SealedInstance`` deployment with FnPacker's router
    and autoscaler (:meth:`RayOptions.deployment_options`)."""
    from ray import serve

    from sealserve.platform.ray._replica import SealedInstance

    deployment = serve.deployment(**options.deployment_options())(SealedInstance)
    return deployment.bind(options.replica_config())


def deploy(options: RayOptions) -> Any:
    """Deploy (or update) the application; its ``DeploymentHandle``."""
    from ray import serve

    handle = serve.run(build_application(options), name=options.app_name, route_prefix=None)
    _log.event(
        "ray.deployed",
        app=options.app_name,
        policy=options.platform.policy,
        max_replicas=options.platform.max_instances,
    )
    return handle


def undeploy(options: RayOptions) -> None:
    """Delete the application: Ray Serve stops every replica (each stops its host)."""
    from ray import serve

    serve.delete(options.app_name, _blocking=True)
    forget_packers(options.app_name)
    _log.event("ray.undeployed", app=options.app_name)


def disconnect(*, shutdown: bool) -> None:
    """Leave Ray; with ``shutdown``, stop Ray Serve and the local Ray :func:`connect` started."""
    import ray
    from ray import serve

    if shutdown:
        serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


def stop(
    options: RayOptions | None,
    *,
    started: bool,
    timeout_s: float = 60.0,
    instance_pids: Mapping[int, str] | None = None,
) -> list[int]:
    """Delete the application, stop Ray Serve and leave Ray within ``timeout_s`` (and the
    second or so a kill takes); the pids it had to kill (see the module docstring).

    ``started``: the local Ray :func:`connect` started (stopped, and killed if it does not
    stop).  ``instance_pids`` (pid -> name): instance hosts and runtimes known on this node,
    killed if still alive once the replicas should have stopped them (a local Ray only).
    """
    import ray

    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    began = time.monotonic()
    deadline = began + timeout_s
    # What the kill needs at the end: waiting for what Ray stops to end, then killing the rest.
    reserve = min(_GONE_S + 5.0, timeout_s / 3)

    def left(share: float = 1.0, *, most: float | None = None, keep: float = reserve) -> float:
        budget = max(0.2, (deadline - keep - time.monotonic()) * share)
        return budget if most is None else min(budget, most)

    clean = True
    if options is not None:
        graceful = options.graceful_shutdown_timeout_s + 10.0
        clean &= bounded(
            "ray.undeploy", lambda: undeploy(options), timeout_s=left(0.6, most=graceful)
        )
        forget_packers(options.app_name)
    # This process's handles go whether or not Ray is ours: their routers would outlive Ray.
    clean &= bounded("ray.handles", _shutdown_handles, timeout_s=left(0.4, most=10.0))
    if started:
        from ray import serve

        clean &= bounded("ray.serve_shutdown", serve.shutdown, timeout_s=left(0.5, most=15.0))
    ray_left = bounded("ray.shutdown", ray.shutdown, timeout_s=left())
    clean &= ray_left
    killed: list[int] = []
    if started:
        tree = set(_local_ray) | descendants(_local_ray)
        tree |= set(instance_pids or {})
        alive = wait_gone(tree, timeout_s=left(most=_GONE_S, keep=reserve - _GONE_S))
        names = {pid: (instance_pids or {}).get(pid) or describe(pid) or "?" for pid in alive}
        killed = kill_named(names, reason="still alive after the Ray stop")
        wait_gone(killed, timeout_s=left(keep=0.0))
        _local_ray.clear()
        if not ray_left:  # Ray's own shutdown was stuck on what is now killed: finish it
            bounded("ray.shutdown_after_kill", ray.shutdown, timeout_s=left(keep=0.0))
    _log.event(
        "ray.stopped",
        level=logging.INFO if clean and not killed else logging.WARNING,
        clean=clean,
        killed=len(killed),
        seconds=round(time.monotonic() - began, 3),
    )
    return killed
