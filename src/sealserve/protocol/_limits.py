"""The input limits an owner declares inside a model, and the check of a request against them.

A small input can make a model allocate gigabytes (issue 10.5: a 0.6 MB MiniLM batch of
48 x 512 grew a runtime from 317 MB to 3.8 GB).  The owner knows what its model is for, so it
declares the largest batch and the largest value of each dynamic dimension, as ONNX
``metadata_props`` of the model *before* it is sealed: the seal authenticates them and binds
them to the model, and only the runtime reads them (no wire, KeyService or store change).

==========================  ============================================================
key                         value
==========================  ============================================================
``sealserve.max_batch``     a decimal int >= 1: the largest first dimension of every input
                            whose first dimension is dynamic
``sealserve.max_dims``      JSON ``{input_name: [max or null per dimension]}``: the largest
                            value of each dynamic dimension (``null``: no bound; a static
                            dimension takes ``null`` or its own size)
==========================  ============================================================

The runtime checks every request's tensors against the model's static shapes and these maxima
before it runs the model (:meth:`InputLimits.refusal`).  Without a declaration the static shapes
still apply and a dynamic dimension is bounded only by the runtime's inference memory cap.

The declaration is hostile input to the runtime (the owner may be anyone): parsing is strict,
bounded in size, and any other ``sealserve.max_*`` key is refused (other ``sealserve.*`` keys,
such as the model zoo's ``sealserve.model``, are not limits).
:meth:`InputLimits.from_metadata` raises a ``ValueError`` that names the problem (for the
owner, at upload); the runtime turns it into one fixed error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final, Literal

__all__ = ["MAX_BATCH_KEY", "MAX_DIMS_KEY", "InputLimits", "Shape"]

MAX_BATCH_KEY: Final = "sealserve.max_batch"
MAX_DIMS_KEY: Final = "sealserve.max_dims"
#: The namespace of limit keys: another key in it is a typo, refused (other ``sealserve.*``
#: keys, such as the model zoo's ``sealserve.model``, are not limits and are left alone).
_PREFIX: Final = "sealserve.max_"
#: The longest declaration value read (a JSON of a few hundred inputs fits).
_MAX_VALUE_CHARS: Final = 65_536
_MAX_DIM: Final = 2**31 - 1
_DECIMAL = re.compile(r"[1-9][0-9]{0,9}")

#: A model input's shape: its size per dimension (``None``: dynamic), or ``None`` for an input
#: whose rank the model does not say.
Shape = tuple[int | None, ...] | None


class InputLimits:
    """What each input of one model may be: its static sizes and the declared maxima."""

    def __init__(
        self,
        shapes: Mapping[str, Shape],
        *,
        max_batch: int | None = None,
        max_dims: Mapping[str, tuple[int | None, ...]] | None = None,
    ) -> None:
        if max_batch is not None and (
            isinstance(max_batch, bool)
            or not isinstance(max_batch, int)
            or not 1 <= max_batch <= _MAX_DIM
        ):
            raise ValueError(f"max_batch must be an int from 1 to {_MAX_DIM}, got {max_batch!r}")
        declared = dict(max_dims or {})
        for name in declared:
            if name not in shapes:
                raise ValueError(
                    f"max_dims names {name!r}, which is not an input of the model "
                    f"(its inputs: {', '.join(sorted(shapes))})"
                )
        if max_batch is not None and not any(
            shape is None or (len(shape) >= 1 and shape[0] is None) for shape in shapes.values()
        ):
            raise ValueError("max_batch is given, but no input of the model has a dynamic batch")
        bounds: dict[str, tuple[int | None, ...] | None] = {}
        static: dict[str, Shape] = {}
        for name, shape in shapes.items():
            maxima = declared.get(name)
            if maxima is not None:
                maxima = _check_maxima(name, shape, maxima)
            rank = len(shape) if shape is not None else (len(maxima) if maxima else None)
            if rank is None:
                bounds[name] = None
            else:
                dims: list[int | None] = list(maxima) if maxima is not None else [None] * rank
                dynamic_first = shape is None or (rank >= 1 and shape[0] is None)
                if max_batch is not None and rank >= 1 and dynamic_first:
                    dims[0] = max_batch if dims[0] is None else min(dims[0], max_batch)
                bounds[name] = tuple(dims)
            static[name] = (
                shape if shape is not None else (None,) * rank if rank is not None else None
            )
        self.max_batch = max_batch
        self.max_dims: dict[str, tuple[int | None, ...]] = {
            k: tuple(v) for k, v in declared.items()
        }
        self._static = static
        self._bounds = bounds

    @classmethod
    def from_metadata(cls, shapes: Mapping[str, Shape], metadata: Mapping[str, str]) -> InputLimits:
        """The limits a model declares in its ``metadata_props`` (``ValueError`` naming what is
        wrong if the declaration is malformed or does not fit the model's inputs)."""
        for key in metadata:
            if key.startswith(_PREFIX) and key not in (MAX_BATCH_KEY, MAX_DIMS_KEY):
                raise ValueError(f"the model declares {key!r}, which sealserve does not know")
        max_batch: int | None = None
        raw = metadata.get(MAX_BATCH_KEY)
        if raw is not None:
            if not isinstance(raw, str) or not _DECIMAL.fullmatch(raw) or int(raw) > _MAX_DIM:
                raise ValueError(f"{MAX_BATCH_KEY} has value {raw[:40]!r}; not an int >= 1")
            max_batch = int(raw)
        max_dims: dict[str, tuple[int | None, ...]] | None = None
        raw = metadata.get(MAX_DIMS_KEY)
        if raw is not None:
            max_dims = _parse_max_dims(raw)
        return cls(shapes, max_batch=max_batch, max_dims=max_dims)

    def metadata(self) -> dict[str, str]:
        """The declaration to write into the model's ``metadata_props``."""
        out: dict[str, str] = {}
        if self.max_batch is not None:
            out[MAX_BATCH_KEY] = str(self.max_batch)
        if self.max_dims:
            out[MAX_DIMS_KEY] = json.dumps(
                {k: list(v) for k, v in sorted(self.max_dims.items())}, separators=(",", ":")
            )
        return out

    def refusal(self, shapes: Mapping[str, tuple[int, ...]]) -> Literal["shape", "limit"] | None:
        """Why tensors of these ``shapes`` (by input name) may not run: ``"shape"`` (not the
        model's input names, ranks or static sizes), ``"limit"`` (over a declared maximum), or
        ``None`` when they may."""
        over = False
        for name, shape in shapes.items():
            if name not in self._bounds:
                return "shape"
            static = self._static[name]
            if static is None:
                continue
            if len(shape) != len(static):
                return "shape"
            bounds = self._bounds[name]
            assert bounds is not None  # a known rank has bounds
            for size, fixed, bound in zip(shape, static, bounds, strict=True):
                if fixed is not None and size != fixed:
                    return "shape"
                if bound is not None and size > bound:
                    over = True
        return "limit" if over else None

    def __repr__(self) -> str:
        return f"InputLimits(max_batch={self.max_batch!r}, max_dims={self.max_dims!r})"


def _check_maxima(name: str, shape: Shape, maxima: object) -> tuple[int | None, ...]:
    if not isinstance(maxima, list | tuple):
        raise ValueError(f"the maxima of input {name!r} must be a list, got {maxima!r}")
    if shape is not None and len(maxima) != len(shape):
        raise ValueError(
            f"input {name!r} has {len(shape)} dimensions, but {len(maxima)} maxima are given"
        )
    out: list[int | None] = []
    for i, bound in enumerate(maxima):
        if bound is None:
            out.append(None)
            continue
        if isinstance(bound, bool) or not isinstance(bound, int) or not 1 <= bound <= _MAX_DIM:
            raise ValueError(
                f"the maximum of dimension {i} of input {name!r} must be an int from 1 to "
                f"{_MAX_DIM} or null, got {bound!r}"
            )
        fixed = shape[i] if shape is not None else None
        if fixed is not None and bound != fixed:
            raise ValueError(
                f"dimension {i} of input {name!r} is static ({fixed}); its maximum must be "
                f"null or {fixed}, got {bound}"
            )
        out.append(bound)
    return tuple(out)


def _parse_max_dims(raw: object) -> dict[str, tuple[int | None, ...]]:
    if not isinstance(raw, str) or len(raw) > _MAX_VALUE_CHARS:
        raise ValueError(f"{MAX_DIMS_KEY} is not a JSON object of at most {_MAX_VALUE_CHARS} chars")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError(f"{MAX_DIMS_KEY} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{MAX_DIMS_KEY} must be a JSON object {{input: [max or null, ...]}}")
    out: dict[str, tuple[int | None, ...]] = {}
    for name, maxima in value.items():
        if not isinstance(maxima, list) or any(
            m is not None and (isinstance(m, bool) or not isinstance(m, int)) for m in maxima
        ):
            raise ValueError(f"{MAX_DIMS_KEY}[{name!r}] must be a list of ints or nulls")
        out[name] = tuple(maxima)
    return out
