"""``sealserve bench tensors``: the formats it compares round-trip, and it reports sizes."""

from __future__ import annotations

import numpy as np
import pytest

from sealserve.bench import tensors as bench
from sealserve.bench.tensors import oip_decode, oip_encode, run_tensor_bench


def test_the_oip_binary_form_round_trips_and_refuses_trailing_bytes() -> None:
    tensors = {
        "input_ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "x": np.ones((1, 2), dtype=np.float32),
    }
    data = oip_encode(tensors)
    back = oip_decode(data)
    assert list(back) == list(tensors)
    assert all(back[n].tobytes() == a.tobytes() for n, a in tensors.items())
    try:
        oip_decode(data + b"\x00")
    except ValueError:
        pass
    else:
        raise AssertionError("trailing bytes were accepted")


def test_one_round_measures_every_format_on_the_demo_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench, "environment", dict)  # it asks git in a subprocess
    doc = run_tensor_bench(repeats=1)
    image = doc["mobilenet-v2 image"]
    assert image["tensor_bytes"] == 3 * 224 * 224 * 4
    assert image["formats"]["sstn"]["overhead_bytes"] == 64
    assert {"sstn", "safetensors", "oip-binary"} <= set(image["formats"])
    tokens = doc["minilm token ids"]
    assert set(tokens["tensors"]) == {"input_ids", "attention_mask", "token_type_ids"}
    for result in (image, tokens):
        for row in result["formats"].values():
            assert row["encode_us"] > 0
            assert row["decode_us"] > 0
