"""Measured cost priors for the live router, whose models are model ids.

A cost model (``sealserve bench runtime --costs-out``) is keyed by zoo model name
(``mobilenet-v2``); the live router names models ``<owner_id>/<name>``.  A model's priors are
those of its name: a zoo model's measured costs when the owner named it as the zoo does, else
the costs the cost model assigns to an unknown name.  The policy refines them from what it
measures.
"""

from __future__ import annotations

from sealserve.packer import CostPriors

__all__ = ["NamedPriors"]


class NamedPriors:
    """``priors`` looked up by the name part of a model id (see the module docstring)."""

    def __init__(self, priors: CostPriors) -> None:
        self.priors = priors

    @property
    def cold_start_s(self) -> float:
        return self.priors.cold_start_s

    def infer_s(self, model: str) -> float:
        return self.priors.infer_s(_name(model))

    def load_s(self, model: str) -> float:
        return self.priors.load_s(_name(model))

    def __repr__(self) -> str:
        return f"NamedPriors({self.priors!r})"


def _name(model: str) -> str:
    return model.rsplit("/", 1)[-1]
