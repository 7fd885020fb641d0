"""Connect to Ray, deploy the sealed-instance deployment with FnPacker's router, remove it.

::

    connect()                                   # a local Ray (or connect(address="ray://..."))
    handle = deploy(options)                    # the SealedInstance deployment, FnPacker routing
    platform = RayPlatform(handle, options=options)
    ...
    undeploy(options); disconnect()

Ray Serve runs without its HTTP proxy here: the gateway (``sealserve platform ray serve``)
sends requests through the deployment handle, so FnPacker's router runs in the gateway's
process and the gateway reports its decisions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from sealserve._log import get_logger
from sealserve.errors import PlatformError
from sealserve.platform.ray._options import RayOptions
from sealserve.platform.ray._registry import forget_packers

__all__ = ["build_application", "connect", "deploy", "disconnect", "undeploy"]

_log = get_logger(__name__)

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
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PlatformError(
                f"could not reach Ray at {address or 'a new local cluster'}: {exc}"
            ) from exc
    serve.start(proxy_location="Disabled")
    _log.event("ray.connected", address=address or "local")
    return address is None


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
