"""What the live platform is configured with: the ``[platform]`` and ``[runtime]`` settings.

Instances come in a few sizes (docs/operating.md, "Instance sizes"): the platform's own
(``instance_memory_mb``) and ``sizes_mb``, which only the ``sealserve`` policy starts.  Every
size keeps the same reserve for the instance host and the runtime (``instance_memory_mb``
less ``memory_budget_mb``); the rest is the runtime's model budget.  Unless it is set, the
budget is derived from the instance's memory and the measured reserve
(:data:`~sealserve.config.RUNTIME_RESERVE_MB`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Final

from sealserve.config import RUNTIME_RESERVE_MB, Settings
from sealserve.errors import ConfigError
from sealserve.packer import POLICY_NAMES, GroupConfig, InstanceShape

__all__ = ["LIVE_POLICIES", "PlatformConfig"]

#: The policies that size each model's instance for that model: every size is a measured
#: configuration of its own in a TEE (the enclave's memory is part of its measurement), which
#: each owner would have to grant.  They are simulator baselines, not live policies.
_SIMULATOR_ONLY: Final = frozenset({"dedicated-fitted"})

#: The FnPacker policies the live platforms run (``platform.policy``).
LIVE_POLICIES: Final = tuple(name for name in POLICY_NAMES if name not in _SIMULATOR_ONLY)

#: The policies that start instances of the other sizes (``sizes_mb``); the others start the
#: platform's own size only.
_SIZED_POLICIES: Final = frozenset({"sealserve"})


def _refusal(policy: str) -> str | None:
    """Why ``policy`` cannot run live (a sentence to follow "... has value X."), or ``None``."""
    if policy in _SIMULATOR_ONLY:
        return (
            "It sizes each model's instance for that model, and in a TEE each size is a measured "
            "runtime of its own that every owner would have to grant: it is a simulator "
            f"baseline (sealserve bench packer), not a live policy. Use one of "
            f"{', '.join(LIVE_POLICIES)}."
        )
    if policy not in POLICY_NAMES:
        return f"Not one of {', '.join(LIVE_POLICIES)}."
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlatformConfig:
    """The platform's parameters (see docs/operating.md, "The local platform").

    ``keep_alive_s``: an idle instance stops this long after its last request (scale to
    zero).  ``max_instances`` caps the instances alive at once, whatever the policy;
    ``instance_concurrency`` caps the requests one instance serves at once.
    ``instance_memory_mb`` is the platform's own instance size and ``sizes_mb`` its other
    sizes (only the ``sealserve`` policy starts them); each instance is billed its own size.
    ``memory_budget_mb`` is what the runtime of an ``instance_memory_mb`` instance may hold of
    unsealed models, each charged ``memory_factor`` times its size; ``None`` (the default)
    makes it ``instance_memory_mb - RUNTIME_RESERVE_MB``.  Every size keeps the same reserve
    (:attr:`reserve_mb`).  ``max_waiting`` caps the requests held at the router (more are
    refused, retryably); ``health_interval_s`` is how often instances are checked; an
    instance whose host exited, whose runtime gave up restarting, or that fails
    ``unhealthy_after`` checks in a row is replaced.  A request whose instance failed before
    it ran is routed again at most ``max_reroutes`` times.
    """

    policy: str = "sealserve"
    keep_alive_s: float = 180.0
    max_instances: int = 4
    instance_concurrency: int = 4
    instance_memory_mb: int = 2048
    memory_budget_mb: int | None = None
    sizes_mb: tuple[int, ...] = (896, 1408)
    memory_factor: float = 4.0
    threads: int = 2
    max_waiting: int = 256
    health_interval_s: float = 2.0
    unhealthy_after: int = 3
    start_timeout_s: float = 120.0
    load_timeout_s: float = 120.0
    max_reroutes: int = 2
    decision_history: int = 256
    #: Spare instances kept at most while new instances are being asked for (see
    #: :mod:`sealserve.packer._spares`); billed like any instance.
    spares: int = 1

    def __post_init__(self) -> None:
        refusal = _refusal(self.policy)
        if refusal is not None:
            raise ValueError(f"policy has value {self.policy!r}. {refusal}")
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
        if isinstance(self.spares, bool) or not isinstance(self.spares, int) or self.spares < 0:
            raise ValueError(f"spares must be an int >= 0, got {self.spares!r}")
        self._check_memory()

    def _check_memory(self) -> None:
        memory, budget = self.instance_memory_mb, self.memory_budget_mb
        if budget is None:
            if memory <= RUNTIME_RESERVE_MB:
                raise ValueError(
                    f"instance_memory_mb must be more than the {RUNTIME_RESERVE_MB} MB reserved "
                    f"for the host and the runtime (or give memory_budget_mb), got {memory!r}"
                )
        elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"memory_budget_mb must be an int >= 1 or None, got {budget!r}")
        elif budget >= memory:
            raise ValueError(
                f"memory_budget_mb ({budget!r}) must be less than instance_memory_mb "
                f"({memory!r}): the host and the runtime live in the instance too"
            )
        sizes: object = self.sizes_mb
        if isinstance(sizes, list):  # from JSON (Ray Serve ships the config as JSON)
            sizes = tuple(sizes)
            object.__setattr__(self, "sizes_mb", sizes)
        if not isinstance(sizes, tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in sizes
        ):
            raise ValueError(f"sizes_mb must be a tuple of ints, got {sizes!r}")
        small = [size for size in self.sizes_mb if size <= self.reserve_mb]
        if small and self.uses_sizes:
            raise ValueError(
                f"sizes_mb must be larger than the reserve of {self.reserve_mb} MB "
                f"(instance_memory_mb {memory} less memory_budget_mb {self.model_budget_mb}), "
                f"got {small[0]!r}"
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PlatformConfig:
        """The platform of ``[platform]`` and ``[runtime]``; ``overrides`` replace fields."""
        platform, runtime = settings.platform, settings.runtime
        refusal = _refusal(platform.policy)
        if refusal is not None:
            raise ConfigError(f"Config 'platform.policy' has value {platform.policy!r}. {refusal}")
        values: dict[str, Any] = {
            "policy": platform.policy,
            "keep_alive_s": platform.keep_alive_s,
            "max_instances": platform.max_instances,
            "instance_concurrency": platform.instance_concurrency,
            "instance_memory_mb": platform.instance_memory_mb,
            "memory_budget_mb": runtime.memory_budget_mb,
            "sizes_mb": platform.sizes_mb,
            "threads": runtime.threads,
            "max_waiting": settings.gateway.max_queued,
            "spares": platform.spares,
        }
        values.update(overrides)
        sizes = tuple(values["sizes_mb"])
        one_size = cls(**(values | {"sizes_mb": ()}))
        small = [size for size in sizes if size <= one_size.reserve_mb]
        if small and one_size.policy in _SIZED_POLICIES:
            if values["memory_budget_mb"] is None:
                reserve = f"the {one_size.reserve_mb} MB reserved for the host and the runtime"
            else:
                reserve = (
                    f"the reserve of {one_size.reserve_mb} MB ('platform.instance_memory_mb' "
                    f"{one_size.instance_memory_mb} less 'runtime.memory_budget_mb' "
                    f"{one_size.model_budget_mb})"
                )
            raise ConfigError(
                f"Config 'platform.sizes_mb' has value {list(sizes)!r}. "
                f"{', '.join(map(str, small))} MB leave no room for models beside {reserve}; "
                "give larger sizes, or [] for none."
            )
        return cls(**values)

    @property
    def model_budget_mb(self) -> int:
        """The model budget of the runtime in an ``instance_memory_mb`` instance:
        ``memory_budget_mb``, or the instance's memory less the measured reserve."""
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb
        return self.instance_memory_mb - RUNTIME_RESERVE_MB

    @property
    def reserve_mb(self) -> int:
        """What every instance keeps for its host and runtime beside the models."""
        return self.instance_memory_mb - self.model_budget_mb

    @property
    def uses_sizes(self) -> bool:
        """Whether the policy starts instances of ``sizes_mb`` (only ``sealserve`` does)."""
        return self.policy in _SIZED_POLICIES and bool(self.sizes_mb)

    def group_config(self, *, sizes: bool = True) -> GroupConfig:
        """The FnPacker function group these instances form; ``sizes=False`` leaves out the
        other sizes (a platform whose instances all have ``instance_memory_mb``)."""
        return GroupConfig(
            name="sealserve",
            budget_mb=float(self.model_budget_mb),
            runtime_base_mb=float(self.reserve_mb),
            memory_mb=self.instance_memory_mb,
            sizes_mb=self.sizes_mb if sizes and self.uses_sizes else (),
            concurrency=self.instance_concurrency,
            keep_alive_s=self.keep_alive_s,
            max_instances=self.max_instances,
        )

    @property
    def shapes(self) -> tuple[InstanceShape, ...]:
        """The instance shapes (memory, model budget) the policy may start, smallest first."""
        return self.group_config().shapes

    def replace(self, **changes: Any) -> PlatformConfig:
        return dataclasses.replace(self, **changes)
