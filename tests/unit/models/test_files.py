"""What ``sealserve user infer`` reads and prints: input files to tensors, outputs to lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sealserve.models import (
    get_spec,
    load_inputs,
    sample_image_path,
    save_outputs,
    summarize_outputs,
    zoo_spec_for,
)
from sealserve.protocol import encode_tensors


def test_tensor_files_are_read_by_name_without_pickle(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "in.npz", X=x, mask=np.ones(3, np.int64))
    got = load_inputs(tmp_path / "in.npz", spec=None)
    assert set(got) == {"X", "mask"}
    np.testing.assert_array_equal(got["X"], x)
    np.save(tmp_path / "in.npy", x)
    assert set(load_inputs(tmp_path / "in.npy", spec=None)) == {"input"}
    spec = get_spec("open-nsfw")
    assert set(load_inputs(tmp_path / "in.npy", spec=spec)) == {"input:0"}
    (tmp_path / "in.sstn").write_bytes(encode_tensors({"X": x}))
    np.testing.assert_array_equal(load_inputs(tmp_path / "in.sstn", spec=None)["X"], x)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_inputs(tmp_path / "obj.npy", spec=None)


def test_an_image_gets_the_zoo_models_preprocessing() -> None:
    photo = sample_image_path()
    spec = zoo_spec_for("mobilenet-v2")
    assert spec is not None
    got = load_inputs(photo, spec=spec)
    assert got["input"].shape == (1, 3, 224, 224)
    nsfw = load_inputs(photo, spec=zoo_spec_for("open_nsfw"))
    assert nsfw["input:0"].shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match="not an image model the zoo knows; name one with --as"):
        load_inputs(photo, spec=None)


def test_text_is_one_sentence_a_line_with_the_zoo_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("first sentence\n\n second one \n")
    spec = zoo_spec_for("MiniLM")
    assert spec is not None
    got = load_inputs(path, spec=spec)
    assert got["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="not a text model"):
        load_inputs(path, spec=zoo_spec_for("mobilenet-v2"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="has no text"):
        load_inputs(tmp_path / "empty.txt", spec=spec)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="not an input file sealserve reads"):
        load_inputs(tmp_path / "x.csv", spec=spec)


def test_outputs_are_summarized_the_way_the_zoo_reads_them(tmp_path: Path) -> None:
    spec = get_spec("open-nsfw")
    summary = summarize_outputs({"outputs": np.array([[0.9, 0.1]], np.float32)}, {}, spec=spec)
    assert summary.lines[0].split() == ["sfw", "0.9000"]
    assert summary.data["top"][0][1]["label"] == "nsfw"
    minilm = get_spec("minilm-int8")
    hidden = np.ones((2, 3, 384), np.float32)
    hidden[1, :, 0] = -1
    mask = np.ones((2, 3), np.int64)
    text = summarize_outputs({"last_hidden_state": hidden}, {"attention_mask": mask},
                             spec=minilm, texts=["a", "b"])  # fmt: skip
    assert text.lines[0] == "  2 embedding(s) of 384 dimensions"
    assert text.lines[-1].startswith("  cosine similarity of the first two: 0.99")
    plain = summarize_outputs({"Y": np.array([[1.0, 3.0]], np.float32)}, {}, spec=None)
    assert plain.lines == ("  Y: float32[1, 2] min 1 max 3 mean 2",)
    saved = save_outputs(tmp_path / "out.npz", {"Y": np.array([1, 2])})
    with np.load(saved) as archive:
        np.testing.assert_array_equal(archive["Y"], [1, 2])
    assert zoo_spec_for("not-a-zoo-model") is None
