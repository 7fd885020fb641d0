"""How sealserve runs on Ray Serve: one options object, and its mapping to Ray Serve's config.

:class:`RayOptions` holds the platform's settings (:class:`~sealserve.platform.PlatformConfig`:
the FnPacker policy, keep-alive, maximum instances, concurrency, memory) and where every
replica finds what an instance needs on its node (the model store, the KeyService, the TEE
platform daemon's socket, the KeyService pin).  The mapping to Ray Serve is pure and lives
here, so it is tested without Ray:

==============================  ===========================================================
sealserve                       Ray Serve
==============================  ===========================================================
an instance                     a replica of the ``SealedInstance`` deployment
``max_instances``               ``autoscaling_config.max_replicas``
scale to zero                   ``min_replicas`` 0 (the default)
``keep_alive_s``                the autoscaler drops one replica per replica idle that long
``instance_concurrency``        ``max_ongoing_requests`` (and ``target_ongoing_requests``)
FnPacker's router               ``request_router_config.request_router_class``
health checks                   ``health_check_period_s`` (the replica checks its host)
==============================  ===========================================================

See docs/platforms.md for what does not map.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Final

from sealserve.platform._config import PlatformConfig

__all__ = ["RayOptions"]

#: Where the deployment's request router and autoscaling policy are imported from.
ROUTER_PATH: Final = "sealserve.platform.ray._router:FnPackerRequestRouter"
AUTOSCALER_PATH: Final = "sealserve.platform.ray._autoscale:PackerAutoscaler"
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayOptions:
    """The sealed-instance deployment on Ray Serve (see the module docstring).

    ``store_dir``, ``tee_socket``, ``platform_key_file`` and ``run_dir`` are paths *on every
    node that runs a replica*: a shared model store (the store holds ciphertext only), the
    node's TEE platform daemon, the platform key the runtimes pin, and a node-local directory
    for the instances' ready files and logs.  ``{node}`` in ``tee_socket`` is the node's
    ``sealserve-node`` label (several Ray nodes on one machine, each with its own daemon).
    ``replica_num_cpus`` is what Ray reserves for a replica (its runtime uses
    ``platform.threads`` cores when it runs).
    """

    store_dir: Path
    keyservice_url: str
    tee_socket: Path
    platform_key_file: Path
    keyservice_measurement: str
    run_dir: Path
    platform: PlatformConfig = dataclasses.field(default_factory=PlatformConfig)
    app_name: str = "sealserve"
    deployment_name: str = "SealedInstance"
    min_replicas: int = 0
    initial_replicas: int | None = None
    replica_num_cpus: float = 1.0
    max_body_mb: int = 64
    instance_log_level: str = "WARNING"
    routing_stats_period_s: float = 1.0
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 5.0
    look_back_period_s: float = 15.0
    graceful_shutdown_timeout_s: float = 30.0
    #: Ray Serve's back-off before it asks the router again about a held request: the first
    #: wait, doubling up to the second (``request_router_config``'s back-off).
    router_backoff_s: tuple[float, float] = (0.005, 0.1)

    def __post_init__(self) -> None:
        if not isinstance(self.platform, PlatformConfig):
            raise TypeError(
                f"platform must be a PlatformConfig, got {type(self.platform).__name__}"
            )
        if not self.keyservice_url.startswith(("http://", "https://")):
            raise ValueError(f"keyservice_url must be an http(s) URL, got {self.keyservice_url!r}")
        for name in ("app_name", "deployment_name", "keyservice_measurement"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if self.platform.uses_sizes:
            raise ValueError(
                "platform.sizes_mb must be empty on Ray Serve (every replica has one size, "
                f"platform.instance_memory_mb), got {list(self.platform.sizes_mb)}"
            )
        top = self.platform.max_instances
        if isinstance(self.min_replicas, bool) or not 0 <= self.min_replicas <= top:
            raise ValueError(
                f"min_replicas must be within [0, platform.max_instances={top}], "
                f"got {self.min_replicas!r}"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= top
        ):
            raise ValueError(
                f"initial_replicas must be within [min_replicas, max_instances], "
                f"got {self.initial_replicas!r}"
            )
        if not self.replica_num_cpus >= 0 or math.isinf(self.replica_num_cpus):
            raise ValueError(f"replica_num_cpus must be >= 0, got {self.replica_num_cpus!r}")
        if isinstance(self.max_body_mb, bool) or self.max_body_mb < 1:
            raise ValueError(f"max_body_mb must be an int >= 1, got {self.max_body_mb!r}")
        if self.instance_log_level not in _LOG_LEVELS:
            raise ValueError(
                f"instance_log_level has value {self.instance_log_level!r}; "
                f"use {', '.join(_LOG_LEVELS)}"
            )
        for name in ("routing_stats_period_s", "look_back_period_s", "graceful_shutdown_timeout_s"):
            value = getattr(self, name)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        first, cap = self.router_backoff_s
        if not 0 < first <= cap or math.isinf(cap):
            raise ValueError(
                f"router_backoff_s must be (first, cap) with 0 < first <= cap < inf, "
                f"got {self.router_backoff_s!r}"
            )
        for name in ("upscale_delay_s", "downscale_delay_s"):
            value = getattr(self, name)
            if not value >= 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def replace(self, **changes: Any) -> RayOptions:
        return dataclasses.replace(self, **changes)

    # -- the mapping -----------------------------------------------------------------------

    def autoscaling_config(self) -> dict[str, Any]:
        """Ray Serve's ``autoscaling_config``: FnPacker's autoscaler within the caps.

        The autoscaler (:class:`~sealserve.platform.ray.PackerAutoscaler`) adds a replica
        while the router holds requests (the policy wants an instance it does not have) and
        drops one per replica idle past the keep-alive; ``min_replicas`` 0 scales to zero.
        """
        p = self.platform
        config: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": p.max_instances,
            "target_ongoing_requests": p.instance_concurrency,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "downscale_to_zero_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
            "aggregation_function": "max",
            "policy": {
                "policy_function": AUTOSCALER_PATH,
                "policy_kwargs": {
                    "keep_alive_s": p.keep_alive_s,
                    "max_replicas": p.max_instances,
                    "cooldown_s": self.look_back_period_s,
                },
            },
        }
        if self.initial_replicas is not None:
            config["initial_replicas"] = self.initial_replicas
        return config

    def router_kwargs(self) -> dict[str, Any]:
        """What the request router is built from (JSON: Ray Serve ships it to every caller)."""
        return {
            "app_name": self.app_name,
            "deployment_name": self.deployment_name,
            "store_dir": str(self.store_dir),
            "platform": dataclasses.asdict(self.platform),
        }

    def request_router_config(self) -> dict[str, Any]:
        return {
            "request_router_class": ROUTER_PATH,
            "request_router_kwargs": self.router_kwargs(),
            "request_routing_stats_period_s": self.routing_stats_period_s,
            "request_routing_stats_timeout_s": max(5.0, 4 * self.routing_stats_period_s),
            "initial_backoff_s": self.router_backoff_s[0],
            "backoff_multiplier": 2.0,
            "max_backoff_s": self.router_backoff_s[1],
        }

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments of ``serve.deployment`` for the sealed-instance deployment."""
        p = self.platform
        return {
            "name": self.deployment_name,
            "max_ongoing_requests": p.instance_concurrency,
            "max_queued_requests": p.max_waiting,
            "autoscaling_config": self.autoscaling_config(),
            "ray_actor_options": {"num_cpus": self.replica_num_cpus},
            "health_check_period_s": p.health_interval_s,
            "health_check_timeout_s": max(10.0, 2 * p.health_interval_s),
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "graceful_shutdown_wait_loop_s": 1.0,
            "request_router_config": self.request_router_config(),
        }

    def replica_config(self) -> dict[str, Any]:
        """What each replica is constructed with (JSON: no object crosses to the replica)."""
        p = self.platform
        return {
            "store_dir": str(self.store_dir),
            "keyservice_url": self.keyservice_url,
            "tee_socket": str(self.tee_socket),
            "platform_key_file": str(self.platform_key_file),
            "keyservice_measurement": self.keyservice_measurement,
            "run_dir": str(self.run_dir),
            "memory_mb": p.instance_memory_mb,
            "budget_mb": p.model_budget_mb,
            "concurrency": p.instance_concurrency,
            "memory_factor": p.memory_factor,
            "threads": p.threads,
            "max_body_mb": self.max_body_mb,
            "log_level": self.instance_log_level,
            "start_timeout_s": p.start_timeout_s,
        }
