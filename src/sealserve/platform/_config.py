"""What the local platform is configured with: the ``[platform]`` and ``[runtime]`` settings."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from sealserve.config import Settings
from sealserve.errors import ConfigError
from sealserve.packer import POLICY_NAMES, GroupConfig

__all__ = ["PlatformConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlatformConfig:
    """The platform's parameters (see docs/operating.md, "The local platform").

    ``keep_alive_s``: an idle instance stops this long after its last request (scale to
    zero).  ``max_instances`` caps the instances alive at once, whatever the policy;
    ``instance_concurrency`` caps the requests one instance serves at once.
    ``instance_memory_mb`` is what an instance is billed; ``memory_budget_mb`` what its runtime
    may hold of unsealed models, each charged ``memory_factor`` times its size.
    ``max_waiting`` caps the requests held at the router (more are refused, retryably);
    ``health_interval_s`` is how often instances are checked; an instance whose host exited,
    whose runtime gave up restarting, or that fails ``unhealthy_after`` checks in a row is
    replaced.  A request whose instance failed before it ran is routed again at most
    ``max_reroutes`` times.
    """

    policy: str = "sealserve"
    keep_alive_s: float = 180.0
    max_instances: int = 4
    instance_concurrency: int = 4
    instance_memory_mb: int = 2048
    memory_budget_mb: int = 1024
    memory_factor: float = 4.0
    threads: int = 2
    max_waiting: int = 256
    health_interval_s: float = 2.0
    unhealthy_after: int = 3
    start_timeout_s: float = 120.0
    load_timeout_s: float = 120.0
    max_reroutes: int = 2
    decision_history: int = 256

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(
                f"policy has value {self.policy!r}; known policies: {', '.join(POLICY_NAMES)}"
            )
        for name in (
            "keep_alive_s",
            "memory_factor",
            "health_interval_s",
            "start_timeout_s",
            "load_timeout_s",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.memory_factor < 1.0:
            raise ValueError(f"memory_factor must be >= 1, got {self.memory_factor!r}")
        for name in (
            "max_instances",
            "instance_concurrency",
            "instance_memory_mb",
            "memory_budget_mb",
            "threads",
            "max_waiting",
            "unhealthy_after",
            "decision_history",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.max_reroutes, bool) or not isinstance(self.max_reroutes, int):
            raise ValueError(f"max_reroutes must be an int >= 0, got {self.max_reroutes!r}")
        if self.max_reroutes < 0:
            raise ValueError(f"max_reroutes must be an int >= 0, got {self.max_reroutes!r}")
        if self.instance_memory_mb < self.memory_budget_mb:
            raise ValueError(
                f"instance_memory_mb ({self.instance_memory_mb!r}) must be at least "
                f"memory_budget_mb ({self.memory_budget_mb!r}): the runtime lives in it too"
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PlatformConfig:
        """The platform of ``[platform]`` and ``[runtime]``; ``overrides`` replace fields."""
        platform, runtime = settings.platform, settings.runtime
        if platform.policy not in POLICY_NAMES:
            raise ConfigError(
                f"Config 'platform.policy' has value {platform.policy!r}. "
                f"Not one of {', '.join(POLICY_NAMES)}."
            )
        values: dict[str, Any] = {
            "policy": platform.policy,
            "keep_alive_s": platform.keep_alive_s,
            "max_instances": platform.max_instances,
            "instance_concurrency": platform.instance_concurrency,
            "instance_memory_mb": platform.instance_memory_mb,
            "memory_budget_mb": runtime.memory_budget_mb,
            "threads": runtime.threads,
            "max_waiting": settings.gateway.max_queued,
        }
        values.update(overrides)
        return cls(**values)

    def group_config(self) -> GroupConfig:
        """The FnPacker function group these instances form."""
        return GroupConfig(
            name="sealserve",
            budget_mb=float(self.memory_budget_mb),
            memory_mb=self.instance_memory_mb,
            concurrency=self.instance_concurrency,
            keep_alive_s=self.keep_alive_s,
            max_instances=self.max_instances,
        )

    def replace(self, **changes: Any) -> PlatformConfig:
        return dataclasses.replace(self, **changes)
