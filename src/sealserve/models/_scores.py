"""Classifier outputs on the client's side: softmax and top-k."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ClassScore", "softmax", "topk"]


@dataclasses.dataclass(frozen=True, slots=True)
class ClassScore:
    """One class of one row: its index, score and label (when the model has labels)."""

    index: int
    score: float
    label: str | None = None


def softmax(logits: npt.NDArray[np.floating[Any]], *, axis: int = -1) -> npt.NDArray[np.float32]:
    """Numerically stable softmax."""
    shifted = logits.astype(np.float32) - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=axis, keepdims=True), dtype=np.float32)


def topk(
    scores: npt.NDArray[np.floating[Any]],
    k: int = 5,
    *,
    apply_softmax: bool = False,
    labels: Sequence[str] | None = None,
) -> list[list[ClassScore]]:
    """The ``k`` best classes of each row of ``[batch, classes]`` scores, best first.

    Ties go to the lower index, so the result does not depend on the sort's stability.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [batch, classes], got shape {scores.shape}")
    classes = scores.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
        raise ValueError(f"k must be an int within [1, {classes}], got {k!r}")
    if labels is not None and len(labels) != classes:
        raise ValueError(f"labels has {len(labels)} names for {classes} classes")
    values = softmax(scores) if apply_softmax else scores
    out: list[list[ClassScore]] = []
    for row in values:
        order = np.lexsort((np.arange(classes), -row.astype(np.float64)))[:k]
        out.append(
            [
                ClassScore(int(i), float(row[i]), labels[int(i)] if labels is not None else None)
                for i in order
            ]
        )
    return out
