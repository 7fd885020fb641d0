"""The policies by name, as the CLI and the live platform's settings name them."""

from __future__ import annotations

from typing import Any

from sealserve.packer._dedicated import DedicatedPolicy, FittedDedicatedPolicy
from sealserve.packer._multiplex import LruMultiplexPolicy
from sealserve.packer._policy import Policy
from sealserve.packer._sealserve import CostPriors, SealservePolicy
from sealserve.packer._sesemi import OneModelSesemiPolicy, SesemiPolicy

__all__ = ["POLICY_ALIASES", "POLICY_NAMES", "make_policy"]

#: Every policy, the baseline first.  ``dedicated-fitted`` (every model's function sized for
#: its model) and ``sesemi-1model`` (one model per instance) are variants reported beside the
#: policies they vary.
POLICY_NAMES = (
    "dedicated",
    "dedicated-fitted",
    "sesemi",
    "sesemi-1model",
    "lru-multiplex",
    "sealserve",
)

#: Earlier names that :func:`make_policy` still accepts, and the policy each names now.
POLICY_ALIASES = {"dedicated-uniform": "dedicated"}


def make_policy(
    name: str, *, priors: CostPriors | None = None, max_models: int = 3, **options: Any
) -> Policy:
    """A fresh policy by name.

    ``priors`` (measured costs) informs ``sealserve``; ``max_models`` is ``lru-multiplex``'s
    cap; other ``options`` go to the policy's constructor.  A name of :data:`POLICY_ALIASES`
    gives the policy it stands for.
    """
    name = POLICY_ALIASES.get(name, name)
    if name == "dedicated":
        return DedicatedPolicy(**options)
    if name == "dedicated-fitted":
        return FittedDedicatedPolicy(**options)
    if name == "sesemi":
        return SesemiPolicy(**options)
    if name == "sesemi-1model":
        return OneModelSesemiPolicy(**options)
    if name == "lru-multiplex":
        return LruMultiplexPolicy(max_models=max_models, **options)
    if name == "sealserve":
        return SealservePolicy(priors=priors, **options)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
