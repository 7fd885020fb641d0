"""Deterministic, non-degenerate weights, generated one tensor at a time.

A builder declares each parameter with the distribution it should be drawn from; nothing is
generated until the model is written, and then one tensor at a time, so writing BERT-base
(438 MB of weights) never holds more than its largest tensor.  Every tensor gets its own
random stream (seeded by the model seed and the tensor's index), so two tensors are never
equal and none is all zeros: onnxruntime would deduplicate those and the graph would no
longer do the work of the real model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Param", "generate"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Param:
    """A float32 parameter: its name, shape and the distribution of its values.

    ``normal``: ``mean + std * N(0, 1)``; ``uniform``: ``U(low, high)``.
    """

    name: str
    shape: tuple[int, ...]
    kind: Literal["normal", "uniform"]
    a: float
    b: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if not self.shape or any(d < 1 for d in self.shape):
            raise ValueError(f"shape of {self.name!r} must be non-empty and positive")
        if self.kind == "normal" and not self.b > 0:
            raise ValueError(f"std of {self.name!r} must be > 0, got {self.b!r}")
        if self.kind == "uniform" and not self.a < self.b:
            raise ValueError(f"low of {self.name!r} must be < high, got {self.a!r}, {self.b!r}")

    @classmethod
    def normal(cls, name: str, shape: tuple[int, ...], *, std: float, mean: float = 0.0) -> Param:
        return cls(name=name, shape=shape, kind="normal", a=mean, b=std)

    @classmethod
    def uniform(cls, name: str, shape: tuple[int, ...], *, low: float, high: float) -> Param:
        return cls(name=name, shape=shape, kind="uniform", a=low, b=high)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 4 * self.size


def generate(param: Param, *, seed: int, index: int) -> npt.NDArray[np.float32]:
    """The values of ``param``: the same for the same (seed, index), distinct across indexes."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    out: npt.NDArray[Any]
    if param.kind == "normal":
        out = rng.standard_normal(param.size, dtype=np.float32)
        out *= np.float32(param.b)
        if param.a:
            out += np.float32(param.a)
    else:
        out = rng.random(param.size, dtype=np.float32)
        out *= np.float32(param.b - param.a)
        out += np.float32(param.a)
    return out.reshape(param.shape)
