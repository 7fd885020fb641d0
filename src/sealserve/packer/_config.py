"""The platform parameters of a function group, and the shapes its instances may take.

A group's own instances have one configuration (:attr:`GroupConfig.shape`: the billed memory
and the runtime's model budget).  ``sizes_mb`` adds a handful of other sizes of the same
runtime build that a policy may start instead (:attr:`GroupConfig.shapes`).  In a TEE each size
is its own measured configuration (the enclave's memory is part of its measurement), so a
deployment offers a few sizes, not one per model.  Every size keeps the same reserve for the
runtime as the group's own instances (their memory less their budget), so an instance of
``size`` MB may hold ``size - reserve`` MB of models.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from sealserve.config import PlatformSettings, RuntimeSettings
from sealserve.packer._decision import InstanceShape

__all__ = ["GroupConfig"]


def _round_up(value: float, step: int) -> int:
    return math.ceil(value / step - 1e-9) * step


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupConfig:
    """The platform parameters of a function group.

    ``memory_mb`` is the billed memory of an instance; ``None`` sizes it to hold the runtime
    (``runtime_base_mb``) plus the model budget, rounded up to ``memory_step_mb`` as platforms
    configure memory in steps.  ``sizes_mb`` are other instance sizes (billed MB) the group may
    start, each with the same runtime reserve (see the module docs).  ``max_instances`` caps
    the instances of each function (all sizes of the group's together); ``max_models`` caps the
    models resident in one instance (``None``: the budget alone).
    """

    name: str = "group"
    budget_mb: float = 1024.0
    runtime_base_mb: float = 256.0
    memory_step_mb: int = 128
    memory_mb: int | None = None
    sizes_mb: tuple[int, ...] = ()
    concurrency: int = 4
    keep_alive_s: float = 180.0
    max_instances: int = 32
    max_models: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must be a non-empty function name, got ''")
        for arg in ("budget_mb", "keep_alive_s"):
            value = getattr(self, arg)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{arg} must be a finite number > 0, got {value!r}")
        if not self.runtime_base_mb >= 0 or math.isinf(self.runtime_base_mb):
            raise ValueError(f"runtime_base_mb must be >= 0, got {self.runtime_base_mb!r}")
        for arg in ("memory_step_mb", "concurrency", "max_instances"):
            value = getattr(self, arg)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        if self.max_models is not None and self.max_models < 1:
            raise ValueError(f"max_models must be >= 1 or None, got {self.max_models!r}")
        if self.memory_mb is not None and self.memory_mb < self.budget_mb:
            raise ValueError(
                f"memory_mb must be at least budget_mb ({self.budget_mb!r}), got {self.memory_mb!r}"
            )
        if not isinstance(self.sizes_mb, tuple):
            raise ValueError(f"sizes_mb must be a tuple of ints, got {self.sizes_mb!r}")
        reserve = self.reserve_mb
        for size in self.sizes_mb:
            if isinstance(size, bool) or not isinstance(size, int) or not size > reserve:
                raise ValueError(
                    f"sizes_mb must hold ints larger than the runtime reserve of {reserve:g} MB "
                    f"(the group's instance memory less its budget), got {size!r}"
                )

    @classmethod
    def from_settings(
        cls,
        platform: PlatformSettings,
        runtime: RuntimeSettings,
        *,
        name: str = "group",
        runtime_base_mb: float = 256.0,
        sizes_mb: tuple[int, ...] = (),
    ) -> GroupConfig:
        """The group the live platform runs, from ``[platform]`` and ``[runtime]`` settings."""
        return cls(
            name=name,
            budget_mb=float(runtime.memory_budget_for(platform)),
            runtime_base_mb=runtime_base_mb,
            memory_mb=platform.instance_memory_mb,
            sizes_mb=sizes_mb,
            concurrency=platform.instance_concurrency,
            keep_alive_s=platform.keep_alive_s,
            max_instances=platform.max_instances,
        )

    @classmethod
    def for_instance(cls, *, memory_mb: int, runtime_base_mb: float, **options: Any) -> GroupConfig:
        """Instances of ``memory_mb`` whose runtime may fill the rest with models.

        The model budget is the instance's memory less the runtime's own
        (``runtime_base_mb``): what a runtime that keeps models resident up to its budget
        can hold in an instance of that size.  ``options`` are the other fields (with
        ``sizes_mb``, every size's budget is its memory less the runtime's, too).
        """
        budget = memory_mb - runtime_base_mb
        if not budget > 0:
            raise ValueError(
                f"memory_mb must exceed runtime_base_mb ({runtime_base_mb!r}) to leave room "
                f"for models, got {memory_mb!r}"
            )
        return cls(
            memory_mb=memory_mb, runtime_base_mb=runtime_base_mb, budget_mb=budget, **options
        )

    def fitted_memory_mb(self, budget_mb: float) -> int:
        """The billed memory of an instance sized for ``budget_mb`` of models."""
        return _round_up(self.runtime_base_mb + budget_mb, self.memory_step_mb)

    @property
    def shape(self) -> InstanceShape:
        """The shape of the group's own instances."""
        memory = (
            self.memory_mb if self.memory_mb is not None else self.fitted_memory_mb(self.budget_mb)
        )
        return InstanceShape(function=self.name, memory_mb=memory, budget_mb=self.budget_mb)

    @property
    def reserve_mb(self) -> float:
        """What an instance keeps for the runtime: its memory less its model budget."""
        memory = (
            self.memory_mb if self.memory_mb is not None else self.fitted_memory_mb(self.budget_mb)
        )
        return memory - self.budget_mb

    @property
    def shapes(self) -> tuple[InstanceShape, ...]:
        """Every shape the group's instances may take, smallest first (the group's included)."""
        own = self.shape
        out = {own.memory_mb: own}
        for size in self.sizes_mb:
            out.setdefault(
                size,
                InstanceShape(function=self.name, memory_mb=size, budget_mb=size - self.reserve_mb),
            )
        return tuple(out[m] for m in sorted(out))

    def fitted_shape(self, function: str, budget_mb: float) -> InstanceShape:
        """An instance of its own ``function`` sized for ``budget_mb`` of models."""
        return InstanceShape(
            function=function, memory_mb=self.fitted_memory_mb(budget_mb), budget_mb=budget_mb
        )
