"""What a user sends and reads: input files to named tensors, output tensors to a summary.

The sealed runtime runs graphs on tensors only; the client turns a file into them before
sealing, with the model's own preprocessing where the zoo (:mod:`sealserve.models`) knows the
model:

=========================  ================================================================
input file                 tensors
=========================  ================================================================
``.npz``                   its arrays, by name (no pickle)
``.npy``                   one array, named after the model's first input (or ``input``)
``.sstn`` / ``.tensors``   sealserve's tensor container (``encode_tensors``)
an image (``.jpg`` ...)    the zoo model's image preprocessing (ImageNet, or open_nsfw's)
``.txt``                   one sentence per line, the zoo model's tokenizer
=========================  ================================================================

and reads the outputs the way the zoo model's postprocessing does: the top classes of a
classifier, the sentence embeddings of a text encoder.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sealserve.models._registry import ModelSpec, get_spec
from sealserve.protocol import decode_tensors

__all__ = [
    "IMAGE_SUFFIXES",
    "OutputSummary",
    "load_inputs",
    "save_outputs",
    "summarize_outputs",
    "zoo_spec_for",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_TENSOR_SUFFIXES = frozenset({".sstn", ".tensors"})
_MAX_TEXT_BYTES = 1 << 20


def zoo_spec_for(name: str) -> ModelSpec | None:
    """The zoo model a model name stands for (``mobilenet-v2``, ``MiniLM``...), if any."""
    try:
        return get_spec(name)
    except ValueError:
        return None


def load_inputs(path: str | Path, *, spec: ModelSpec | None) -> dict[str, npt.NDArray[Any]]:
    """The named tensors of an input file (see the module docstring); ``ValueError`` says
    what is wrong with the file or why it needs a zoo model."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: np.asarray(archive[name]) for name in archive.files}
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        name = spec.inputs[0].name if spec is not None else "input"
        return {name: np.asarray(array)}
    if suffix in _TENSOR_SUFFIXES:
        return dict(decode_tensors(path.read_bytes(), copy=True))
    if suffix in IMAGE_SUFFIXES:
        if spec is None or spec.task not in ("image-classification", "nsfw-classification"):
            raise ValueError(
                f"'{path.name}' is an image, but the model is not an image model the zoo "
                "knows; name one with --as (e.g. --as mobilenet-v2) or send tensors (.npz)"
            )
        return spec.preprocess(path)
    if suffix == ".txt":
        if spec is None or spec.task not in ("text-encoding", "text-embedding"):
            raise ValueError(
                f"'{path.name}' is text, but the model is not a text model the zoo knows; "
                "name one with --as (e.g. --as minilm-int8) or send tensors (.npz)"
            )
        raw = path.read_bytes()
        if len(raw) > _MAX_TEXT_BYTES:
            raise ValueError(f"'{path.name}' is over {_MAX_TEXT_BYTES} bytes of text")
        lines = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"'{path.name}' has no text: write one sentence per line")
        return spec.preprocess(lines)
    raise ValueError(
        f"'{path.name}' is not an input file sealserve reads: use .npz, .npy, .sstn, "
        "an image (.jpg, .png, ...) or text (.txt)"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class OutputSummary:
    """What the outputs say, for people: ``lines`` to print, ``data`` for JSON."""

    lines: tuple[str, ...]
    data: dict[str, Any]


def summarize_outputs(
    outputs: Mapping[str, npt.NDArray[Any]],
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    spec: ModelSpec | None,
    texts: list[str] | None = None,
) -> OutputSummary:
    """Top classes, embeddings, or plain tensor statistics when the model is not the zoo's."""
    if spec is not None and spec.task in ("image-classification", "nsfw-classification"):
        rows = spec.postprocess(outputs, inputs)
        lines = []
        data: dict[str, Any] = {"task": spec.task, "top": []}
        for row in rows:
            scores = [{"class": s.index, "label": s.label, "score": round(s.score, 6)} for s in row]
            data["top"].append(scores)
            lines += [f"  {s.label or f'class {s.index}':>12}  {s.score:.4f}" for s in row]
        return OutputSummary(tuple(lines), data)
    if spec is not None and spec.task in ("text-encoding", "text-embedding"):
        embeddings = np.asarray(spec.postprocess(outputs, inputs))
        lines = [f"  {embeddings.shape[0]} embedding(s) of {embeddings.shape[1]} dimensions"]
        for i, row in enumerate(embeddings):
            label = texts[i] if texts is not None and i < len(texts) else f"row {i}"
            head = ", ".join(f"{v:+.3f}" for v in row[:4])
            lines.append(f"  [{head}, ...]  {label}")
        if embeddings.shape[0] >= 2:
            similarity = float(embeddings[0] @ embeddings[1])
            lines.append(f"  cosine similarity of the first two: {similarity:.4f}")
        data = {"task": spec.task, "embeddings": embeddings.round(6).tolist()}
        return OutputSummary(tuple(lines), data)
    lines = []
    data = {"outputs": {}}
    for name, array in outputs.items():
        stats: dict[str, Any] = {"dtype": str(array.dtype), "shape": list(array.shape)}
        if array.size and np.issubdtype(array.dtype, np.number):
            stats.update(min=float(array.min()), max=float(array.max()), mean=float(array.mean()))
        data["outputs"][name] = stats
        lines.append(
            f"  {name}: {array.dtype}{list(array.shape)} "
            + (
                f"min {stats['min']:.4g} max {stats['max']:.4g} mean {stats['mean']:.4g}"
                if "min" in stats
                else ""
            )
        )
    return OutputSummary(tuple(lines), data)


def save_outputs(path: str | Path, outputs: Mapping[str, npt.NDArray[Any]]) -> Path:
    """Write the outputs as an ``.npz`` (no pickle)."""
    path = Path(path)
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {name: np.asarray(a) for name, a in outputs.items()}
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path
