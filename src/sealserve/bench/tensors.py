"""``sealserve bench tensors``: the tensor container (SSTN) against formats clients have.

What decided that the wire keeps SSTN (docs/protocol.md, "Why SSTN"): on the demo's inputs
(MobileNetV2's 600 KB image tensor of the sample photograph, MiniLM's token ids of the demo's
two sentences), in one run, interleaved, medians of repeats:

* ``sstn``: :func:`~sealserve.protocol.encode_tensors` / ``decode_tensors`` (copies);
* ``safetensors``: ``safetensors.numpy.save`` / ``load`` (when the ``bench`` extra is in);
* ``oip-binary``: the Open Inference Protocol's binary tensor extension, a JSON inference
  request whose inputs say ``binary_data_size`` followed by the raw tensors; inside an
  envelope the JSON's length (``Inference-Header-Content-Length`` on plain HTTP) must travel
  too, as an 8-byte prefix here.

The baseline is sealing the same SSTN plaintext (:func:`~sealserve.crypto.seal`), the work
every request does anyway: ``encode/seal`` says what a format adds to it.  Sizes are exact
(bytes over the tensors' own).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import numpy as np
import numpy.typing as npt
import typer
from rich.console import Console

from sealserve.bench._common import environment, interleaved, median, print_table, write_json
from sealserve.crypto import SymmetricKey, seal
from sealserve.protocol import decode_tensors, encode_tensors

__all__ = ["demo_inputs", "oip_decode", "oip_encode", "register", "run_tensor_bench"]

Tensors = dict[str, npt.NDArray[Any]]
_SENTENCES: Final = (
    "Grace Hopper wrote one of the first compilers.",
    "A pioneer of computer programming built an early compiler.",
)
_OIP_TYPES: Final = {"float32": "FP32", "int64": "INT64"}
_OIP_DTYPES: Final = {v: np.dtype(k) for k, v in _OIP_TYPES.items()}
_CONTEXT: Final = {"purpose": "bench"}
_LOOPS: Final = 20


def demo_inputs() -> dict[str, Tensors]:
    """The demo's two inputs: the sample photograph for MobileNetV2, MiniLM's token ids."""
    from sealserve.models import get_spec, sample_image_path

    return {
        "mobilenet-v2 image": get_spec("mobilenet-v2").preprocess(sample_image_path()),
        "minilm token ids": get_spec("minilm-int8").preprocess(list(_SENTENCES)),
    }


def oip_encode(tensors: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """An OIP binary-extension request: u64 LE JSON length, the JSON, then the raw tensors."""
    inputs = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": _OIP_TYPES[array.dtype.name],
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in tensors.items()
    ]
    header = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
    return b"".join(
        [struct.pack("<Q", len(header)), header, *(a.tobytes() for a in tensors.values())]
    )


def oip_decode(data: bytes) -> Tensors:
    (length,) = struct.unpack_from("<Q", data)
    request = json.loads(data[8 : 8 + length])
    pos = 8 + length
    out: Tensors = {}
    for item in request["inputs"]:
        dtype = _OIP_DTYPES[item["datatype"]]
        size = int(item["parameters"]["binary_data_size"])
        array = np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=pos)
        out[item["name"]] = array.reshape(item["shape"]).copy()
        pos += size
    if pos != len(data):
        raise ValueError("trailing bytes")
    return out


def _formats() -> dict[str, tuple[Callable[[Tensors], bytes], Callable[[bytes], Tensors]]]:
    formats: dict[str, tuple[Callable[[Tensors], bytes], Callable[[bytes], Tensors]]] = {
        "sstn": (encode_tensors, decode_tensors),
    }
    try:
        from safetensors.numpy import load, save
    except ImportError:
        pass
    else:
        formats["safetensors"] = (save, load)
    formats["oip-binary"] = (oip_encode, oip_decode)
    return formats


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(_LOOPS):
        fn()
    return (time.perf_counter() - start) / _LOOPS


def _sealing(key: SymmetricKey, plaintext: bytes) -> Callable[[], float]:
    return lambda: _timed(lambda: seal(key, plaintext, context=_CONTEXT))


def _encoding(enc: Callable[[Tensors], bytes], tensors: Tensors) -> Callable[[], float]:
    return lambda: _timed(lambda: enc(tensors))


def _decoding(dec: Callable[[bytes], Tensors], blob: bytes) -> Callable[[], float]:
    return lambda: _timed(lambda: dec(blob))


def run_tensor_bench(*, repeats: int = 30) -> dict[str, Any]:
    """Measure every format on the demo's inputs; the JSON document."""
    key = SymmetricKey.generate()
    formats = _formats()
    results: dict[str, Any] = {}
    for label, tensors in demo_inputs().items():
        raw = sum(a.nbytes for a in tensors.values())
        encoded = {name: enc(tensors) for name, (enc, _) in formats.items()}
        for name, (_, dec) in formats.items():
            got = dec(encoded[name])
            if sorted(got) != sorted(tensors) or any(
                got[n].tobytes() != a.tobytes() for n, a in tensors.items()
            ):
                raise AssertionError(f"{name} does not round-trip {label}")
        cases: dict[str, Callable[[], float]] = {"seal": _sealing(key, encoded["sstn"])}
        for name, (enc, dec) in formats.items():
            cases[f"{name} encode"] = _encoding(enc, tensors)
            cases[f"{name} decode"] = _decoding(dec, encoded[name])
        samples = interleaved(cases, repeats=repeats)
        seal_s = median(samples["seal"])
        rows = {}
        for name in formats:
            enc_s = median(samples[f"{name} encode"])
            dec_s = median(samples[f"{name} decode"])
            rows[name] = {
                "bytes": len(encoded[name]),
                "overhead_bytes": len(encoded[name]) - raw,
                "encode_us": enc_s * 1e6,
                "decode_us": dec_s * 1e6,
                "encode_over_seal": enc_s / seal_s,
                "decode_over_seal": dec_s / seal_s,
                "encode_over_sstn": enc_s / median(samples["sstn encode"]),
                "decode_over_sstn": dec_s / median(samples["sstn decode"]),
            }
        results[label] = {
            "tensors": {n: [a.dtype.name, list(a.shape)] for n, a in tensors.items()},
            "tensor_bytes": raw,
            "seal_us": seal_s * 1e6,
            "formats": rows,
            "samples_s": samples,
        }
    return {"benchmark": "tensors", "repeats": repeats, "environment": environment(), **results}


def _print(doc: Mapping[str, Any], console: Console) -> None:
    for label, result in doc.items():
        if not isinstance(result, dict) or "formats" not in result:
            continue
        rows = [
            [
                name,
                r["bytes"],
                r["overhead_bytes"],
                r["encode_us"],
                r["decode_us"],
                r["encode_over_seal"],
                r["encode_over_sstn"],
                r["decode_over_sstn"],
            ]
            for name, r in result["formats"].items()
        ]
        print_table(
            f"{label}: {result['tensor_bytes']} tensor bytes; seal {result['seal_us']:.1f} us",
            ["format", "bytes", "overhead", "encode us", "decode us", "encode/seal",
             "encode/sstn", "decode/sstn"],
            rows,
            console=console,
        )  # fmt: skip


def _tensors(
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved rounds per case.")] = 30,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results here.")
    ] = None,
) -> None:
    """SSTN against safetensors and the OIP binary extension on the demo's inputs."""
    doc = run_tensor_bench(repeats=repeats)
    _print(doc, Console())
    if json_path is not None:
        write_json(json_path, doc)
        Console().print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``tensors`` to the ``sealserve bench`` group."""
    app.command("tensors")(_tensors)
