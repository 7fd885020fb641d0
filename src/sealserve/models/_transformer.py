"""Text encoders: BERT-base and DistilBERT, as Hugging Face's ``BertModel`` and
``DistilBertModel`` define them (uncased vocabulary of 30,522 WordPiece tokens).

Inputs are ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for BERT), int64,
``[batch, seq_len]`` with the sequence length fixed when the graph is built (1 to 512; the
position table always has its 512 rows).  Outputs: ``last_hidden_state`` (float32,
``[batch, seq_len, 768]``) and, for BERT, ``pooler_output`` (``[batch, 768]``).  Parameter
counts are the published ones: 109,482,240 and 66,362,880.

Weights are normals with BERT's initializer range (0.02); LayerNorm scales are near one and
every bias is small and non-zero, so the hidden states are finite and differ by token.
"""

from __future__ import annotations

import math

from onnx import TensorProto

from sealserve.models._graph import GraphBuilder
from sealserve.models._weights import Param

__all__ = ["MAX_POSITIONS", "VOCAB_SIZE", "build_bert_base", "build_distilbert", "check_seq_len"]

VOCAB_SIZE = 30522
MAX_POSITIONS = 512
_HIDDEN = 768
_HEADS = 12
_HEAD_DIM = _HIDDEN // _HEADS
_FFN = 3072
_STD = 0.02


class _Encoder:
    def __init__(self, g: GraphBuilder, seq_len: int) -> None:
        self.g = g
        self.seq_len = seq_len

    def dense(self, x: str, name: str, cin: int, cout: int) -> str:
        w = self.g.param(Param.normal(f"{name}.weight", (cin, cout), std=_STD))
        b = self.g.param(Param.normal(f"{name}.bias", (cout,), std=_STD))
        return self.g.op("Add", [self.g.op("MatMul", [x, w]), b])

    def layer_norm(self, x: str, name: str) -> str:
        gamma = self.g.param(Param.uniform(f"{name}.weight", (_HIDDEN,), low=0.9, high=1.1))
        beta = self.g.param(Param.normal(f"{name}.bias", (_HIDDEN,), std=_STD))
        return self.g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-12)

    def heads(self, x: str, perm: list[int]) -> str:
        shape = self.g.const([-1, self.seq_len, _HEADS, _HEAD_DIM])
        return self.g.op("Transpose", [self.g.op("Reshape", [x, shape])], perm=perm)

    def mask_bias(self, mask: str) -> str:
        """``[batch, seq]`` int64 mask to an additive ``[batch, 1, 1, seq]`` float bias."""
        as_float = self.g.op("Cast", [mask], to=TensorProto.FLOAT)
        one = self.g.const(1.0, dtype="float32")
        big = self.g.const(-10000.0, dtype="float32")
        bias = self.g.op("Mul", [self.g.op("Sub", [one, as_float]), big])
        return self.g.op("Unsqueeze", [bias, self.g.const([1, 2])])

    def attention(self, h: str, name: str, bias: str, *, q: str, k: str, v: str, o: str) -> str:
        query = self.heads(self.dense(h, f"{name}.{q}", _HIDDEN, _HIDDEN), [0, 2, 1, 3])
        key = self.heads(self.dense(h, f"{name}.{k}", _HIDDEN, _HIDDEN), [0, 2, 3, 1])
        value = self.heads(self.dense(h, f"{name}.{v}", _HIDDEN, _HIDDEN), [0, 2, 1, 3])
        scale = self.g.const(1.0 / math.sqrt(_HEAD_DIM), dtype="float32")
        scores = self.g.op("Mul", [self.g.op("MatMul", [query, key]), scale])
        probs = self.g.op("Softmax", [self.g.op("Add", [scores, bias])], axis=-1)
        context = self.g.op("Transpose", [self.g.op("MatMul", [probs, value])], perm=[0, 2, 1, 3])
        merged = self.g.op("Reshape", [context, self.g.const([-1, self.seq_len, _HIDDEN])])
        return self.dense(merged, o, _HIDDEN, _HIDDEN)

    def gelu(self, x: str) -> str:
        """Exact GELU, ``x * 0.5 * (1 + erf(x / sqrt 2))`` (onnxruntime fuses it)."""
        sqrt2 = self.g.const(math.sqrt(2.0), dtype="float32")
        one = self.g.const(1.0, dtype="float32")
        half = self.g.const(0.5, dtype="float32")
        erf = self.g.op("Erf", [self.g.op("Div", [x, sqrt2])])
        return self.g.op("Mul", [self.g.op("Mul", [x, self.g.op("Add", [erf, one])]), half])

    def ffn(self, h: str, up: str, down: str) -> str:
        return self.dense(self.gelu(self.dense(h, up, _HIDDEN, _FFN)), down, _FFN, _HIDDEN)

    def positions(self, name: str) -> str:
        table = self.g.param(Param.normal(name, (MAX_POSITIONS, _HIDDEN), std=_STD))
        starts, ends = self.g.const([0]), self.g.const([self.seq_len])
        return self.g.op("Slice", [table, starts, ends, self.g.const([0])])


def check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int):
        raise TypeError(f"seq_len must be an int, got {seq_len!r}")
    if not 1 <= seq_len <= MAX_POSITIONS:
        raise ValueError(f"seq_len must be within [1, {MAX_POSITIONS}], got {seq_len!r}")


def build_bert_base(*, seq_len: int = 128, seed: int = 0) -> GraphBuilder:
    """BERT-base uncased (12 layers, 768 hidden, 12 heads): 109,482,240 parameters."""
    check_seq_len(seq_len)
    g = GraphBuilder("bert_base", seed=seed, doc=f"BERT-base uncased, sequence length {seq_len}")
    g.metadata["seq_len"] = str(seq_len)
    enc = _Encoder(g, seq_len)
    shape: list[int | str] = ["batch", seq_len]
    ids = g.input("input_ids", TensorProto.INT64, shape)
    mask = g.input("attention_mask", TensorProto.INT64, shape)
    types = g.input("token_type_ids", TensorProto.INT64, shape)

    words = g.param(
        Param.normal("embeddings.word_embeddings.weight", (VOCAB_SIZE, _HIDDEN), std=_STD)
    )
    x = g.op(
        "Add",
        [g.op("Gather", [words, ids]), enc.positions("embeddings.position_embeddings.weight")],
    )
    type_table = g.param(
        Param.normal("embeddings.token_type_embeddings.weight", (2, _HIDDEN), std=_STD)
    )
    x = g.op("Add", [x, g.op("Gather", [type_table, types])])
    h = enc.layer_norm(x, "embeddings.LayerNorm")
    bias = enc.mask_bias(mask)
    for i in range(12):
        p = f"encoder.layer.{i}"
        a = enc.attention(
            h,
            f"{p}.attention.self",
            bias,
            q="query",
            k="key",
            v="value",
            o=f"{p}.attention.output.dense",
        )
        h = enc.layer_norm(g.op("Add", [a, h]), f"{p}.attention.output.LayerNorm")
        f = enc.ffn(h, f"{p}.intermediate.dense", f"{p}.output.dense")
        h = enc.layer_norm(g.op("Add", [f, h]), f"{p}.output.LayerNorm")
    g.output(h, "last_hidden_state", TensorProto.FLOAT, ["batch", seq_len, _HIDDEN])
    first = g.op("Gather", [h, g.const(0)], axis=1)
    pooled = g.op("Tanh", [enc.dense(first, "pooler.dense", _HIDDEN, _HIDDEN)])
    g.output(pooled, "pooler_output", TensorProto.FLOAT, ["batch", _HIDDEN])
    return g


def build_distilbert(*, seq_len: int = 128, seed: int = 0) -> GraphBuilder:
    """DistilBERT base uncased (6 layers, 768 hidden, 12 heads): 66,362,880 parameters."""
    check_seq_len(seq_len)
    g = GraphBuilder("distilbert", seed=seed, doc=f"DistilBERT uncased, sequence length {seq_len}")
    g.metadata["seq_len"] = str(seq_len)
    enc = _Encoder(g, seq_len)
    shape: list[int | str] = ["batch", seq_len]
    ids = g.input("input_ids", TensorProto.INT64, shape)
    mask = g.input("attention_mask", TensorProto.INT64, shape)

    words = g.param(
        Param.normal("embeddings.word_embeddings.weight", (VOCAB_SIZE, _HIDDEN), std=_STD)
    )
    x = g.op(
        "Add",
        [g.op("Gather", [words, ids]), enc.positions("embeddings.position_embeddings.weight")],
    )
    h = enc.layer_norm(x, "embeddings.LayerNorm")
    bias = enc.mask_bias(mask)
    for i in range(6):
        p = f"transformer.layer.{i}"
        a = enc.attention(
            h, f"{p}.attention", bias, q="q_lin", k="k_lin", v="v_lin", o=f"{p}.attention.out_lin"
        )
        h = enc.layer_norm(g.op("Add", [a, h]), f"{p}.sa_layer_norm")
        f = enc.ffn(h, f"{p}.ffn.lin1", f"{p}.ffn.lin2")
        h = enc.layer_norm(g.op("Add", [f, h]), f"{p}.output_layer_norm")
    g.output(h, "last_hidden_state", TensorProto.FLOAT, ["batch", seq_len, _HIDDEN])
    return g
