"""Image preprocessing on the client's side: the sealed runtime only ever sees tensors.

Two pipelines: torchvision's ImageNet evaluation transform (for the built classifiers) and
Yahoo's open_nsfw reference pipeline.  Both take a path, bytes, a binary file or a PIL image
and return a float32 batch of one.  Pillow and matplotlib (for the sample photo) come with the
``models`` extra and are imported only when used.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import numpy as np
import numpy.typing as npt

from sealserve.errors import ExtraNotInstalled

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPEN_NSFW_MEAN_BGR",
    "ImageSource",
    "imagenet_preprocess",
    "load_image",
    "open_nsfw_preprocess",
    "sample_image_path",
]

ImageSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The Caffe mean of open_nsfw, in BGR order.
OPEN_NSFW_MEAN_BGR = (104.0, 117.0, 123.0)

_MAX_PIXELS = 64_000_000


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ExtraNotInstalled(
            "image preprocessing needs the 'models' extra (pillow): pip install 'sealserve[models]'"
        ) from exc
    return Image


def load_image(source: ImageSource) -> Image.Image:
    """Decode ``source`` into an RGB PIL image; a bad image raises ValueError."""
    pil = _pil()
    if isinstance(source, pil.Image):
        image = source
    else:
        if isinstance(source, bytes | bytearray):
            stream: Any = io.BytesIO(bytes(source))
        elif isinstance(source, str | os.PathLike):
            stream = Path(source)
        elif hasattr(source, "read"):
            stream = source
        else:
            raise TypeError(
                "source must be a path, bytes, a binary file or a PIL image, "
                f"got {type(source).__name__}"
            )
        try:
            image = pil.open(stream)
            if image.width * image.height > _MAX_PIXELS:
                raise ValueError(
                    f"image is {image.width}x{image.height}, over {_MAX_PIXELS} pixels"
                )
            image.load()
        except (pil.UnidentifiedImageError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ValueError(f"cannot decode the image: {exc}") from exc
    rgb: Image.Image = image if image.mode == "RGB" else image.convert("RGB")
    return rgb


def imagenet_preprocess(
    source: ImageSource, *, resize: int = 256, crop: int = 224
) -> npt.NDArray[np.float32]:
    """torchvision's evaluation transform: shorter side to ``resize`` (bilinear), centre crop
    ``crop``, scale to [0, 1], normalise with the ImageNet mean and std; ``[1, 3, crop, crop]``.
    """
    if crop < 1 or resize < crop:
        raise ValueError(f"need 1 <= crop <= resize, got crop={crop!r}, resize={resize!r}")
    pil = _pil()
    image = load_image(source)
    width, height = image.width, image.height
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    image = image.resize(size, resample=pil.Resampling.BILINEAR)
    left = round((size[0] - crop) / 2)
    top = round((size[1] - crop) / 2)
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    array -= np.asarray(IMAGENET_MEAN, dtype=np.float32)
    array /= np.asarray(IMAGENET_STD, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[np.newaxis])


def open_nsfw_preprocess(
    source: ImageSource, *, jpeg_roundtrip: bool = True
) -> npt.NDArray[np.float32]:
    """Yahoo's open_nsfw pipeline: RGB, resize to 256x256 (bilinear), re-encode as JPEG (the
    reference scores were computed on that), centre crop 224, BGR order minus the Caffe mean;
    NHWC ``[1, 224, 224, 3]``."""
    pil = _pil()
    image = load_image(source).resize((256, 256), resample=pil.Resampling.BILINEAR)
    if jpeg_roundtrip:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        buffer.seek(0)
        image = pil.open(buffer)
        image.load()
    pixels = np.asarray(image, dtype=np.float32)[16:240, 16:240]
    bgr = pixels[:, :, ::-1] - np.asarray(OPEN_NSFW_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray(bgr[np.newaxis], dtype=np.float32)


def sample_image_path() -> Path:
    """The photograph of Grace Hopper that matplotlib ships, a real image for tests and demos."""
    try:
        from matplotlib import cbook
    except ImportError as exc:
        raise ExtraNotInstalled(
            "the sample image needs the 'models' extra (matplotlib): "
            "pip install 'sealserve[models]'"
        ) from exc
    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
