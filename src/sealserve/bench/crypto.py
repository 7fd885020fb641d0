"""``sealserve bench crypto``: what sealserve's framing costs over raw AES-256-GCM.

In one run, interleaved, medians of several repeats:

* raw ``AESGCM.encrypt`` / ``decrypt`` (a fresh random nonce each, as any correct caller
  needs) against :func:`~sealserve.crypto.seal` / :func:`~sealserve.crypto.unseal` at 1 KiB,
  600 KiB and 64 MiB;
* unsealing a 100 MiB sealed model, streamed from a file
  (:func:`~sealserve.crypto.unseal_model_stream`) and from memory
  (:func:`~sealserve.crypto.unseal_model`), against raw AES-GCM decryption of the same 100 MiB
  as one message; sealing it (:func:`~sealserve.crypto.seal_model`) is shown for reference.

Repeats are interleaved round-robin, every other round in reverse order.  The JSON holds
every sample and, at its top level, ``framing_overhead`` (the largest seal or unseal time
ratio over raw AES-GCM at sizes >= 600 KiB; goal <= 1.10) and ``model_unseal_ratio``
(streamed model unsealing rate over the raw AES-GCM rate; goal >= 0.5).  Both are medians of
per-round ratios, each case against its baseline of the same round, so that a slow phase of
a shared machine cancels out; the table's ``time ratio`` is the plain ratio of the medians.

Why sealserve can beat the raw call at large sizes: ``AESGCM.encrypt``/``decrypt`` return a
new ``bytes`` that is zero-filled before the cipher writes it, while ``seal``/``unseal``
build their result in place with ``encrypt_into``/``decrypt_into`` (one write, no copy).
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sealserve.bench._common import environment, interleaved, median, print_table, ratio, write_json
from sealserve.crypto import (
    SymmetricKey,
    seal,
    seal_model,
    unseal,
    unseal_model,
    unseal_model_stream,
)

__all__ = ["CryptoBenchConfig", "register", "run_crypto_bench"]

KIB: Final = 1024
MIB: Final = 1024 * KIB
FRAMING_GOAL: Final = 1.10
MODEL_GOAL: Final = 0.5
_CONTEXT: Final = {"purpose": "bench", "model_id": "bench-model", "request_id": "r-000001"}
#: Each sample runs an operation enough times to last about this long (small sizes).
_SAMPLE_TARGET_S: Final = 0.05


@dataclasses.dataclass(frozen=True, kw_only=True)
class CryptoBenchConfig:
    """Sizes and repeats of one run."""

    message_sizes: tuple[int, ...] = (1 * KIB, 600 * KIB, 64 * MIB)
    model_size: int = 100 * MIB
    repeats: int = 9

    @classmethod
    def quick(cls) -> CryptoBenchConfig:
        """A short run for smoke tests: smaller large sizes, fewer repeats."""
        return cls(message_sizes=(1 * KIB, 600 * KIB, 8 * MIB), model_size=16 * MIB, repeats=3)

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats!r}")
        if not self.message_sizes or min(self.message_sizes) < 1:
            raise ValueError(f"message_sizes must be positive, got {self.message_sizes!r}")
        if self.model_size < MIB:
            raise ValueError(f"model_size must be >= 1 MiB, got {self.model_size!r}")


def _per_op(fn: Callable[[], object], iterations: int) -> Callable[[], float]:
    def sample() -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        return (time.perf_counter() - start) / iterations

    return sample


def _iterations_for(fn: Callable[[], object]) -> int:
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(100_000, int(_SAMPLE_TARGET_S / once)))


def run_crypto_bench(
    config: CryptoBenchConfig,
    *,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return the JSON document (see the module docstring)."""
    key = SymmetricKey.generate()
    raw = AESGCM(key.to_bytes())
    cases: dict[str, Callable[[], float]] = {}
    sizes: dict[str, int] = {}

    for size in config.message_sizes:
        for name, fn in _message_ops(key, raw, os.urandom(size)).items():
            label = f"{name}@{size}"
            cases[label] = _per_op(fn, _iterations_for(fn))
            sizes[label] = size

    model = os.urandom(config.model_size)
    model_nonce = os.urandom(12)
    model_raw_ct = raw.encrypt(model_nonce, model, None)
    sealed_buffer = io.BytesIO()
    seal_model(key, io.BytesIO(model), sealed_buffer, model_id="bench-model", version=1)
    sealed = sealed_buffer.getvalue()
    del sealed_buffer
    sealed_path = workdir / "model.sealed"
    sealed_path.write_bytes(sealed)

    def stream_unseal() -> object:
        with sealed_path.open("rb", buffering=0) as src:
            return unseal_model_stream(key, src, model_id="bench-model", version=1)

    def seal_model_op() -> object:
        return seal_model(key, io.BytesIO(model), io.BytesIO(), model_id="bench-model", version=1)

    model_ops: dict[str, Callable[[], object]] = {
        "raw_decrypt_model": lambda: raw.decrypt(model_nonce, model_raw_ct, None),
        "unseal_model_stream": stream_unseal,
        "unseal_model_memory": lambda: unseal_model(key, sealed, model_id="bench-model", version=1),
        "seal_model": seal_model_op,
    }
    for name, fn in model_ops.items():
        fn()  # warm: page cache, allocator
        cases[name] = _per_op(fn, 1)
        sizes[name] = config.model_size

    # Interleaved rounds, every other one in reverse order, so that neither side of a
    # comparison always runs right after the other.
    samples: dict[str, list[float]] = {name: [] for name in cases}
    forward = list(cases.items())
    for round_no in range(config.repeats):
        order = dict(forward if round_no % 2 == 0 else reversed(forward))
        for name, values in interleaved(order, repeats=1, progress=progress).items():
            samples[name].extend(values)
    medians = {name: median(values) for name, values in samples.items()}

    results = []
    for name, values in samples.items():
        op, _, _ = name.partition("@")
        size = sizes[name]
        baseline = _baseline_of(name)
        results.append(
            {
                "case": name,
                "operation": op,
                "size_bytes": size,
                "median_s": medians[name],
                "samples_s": values,
                "gb_per_s": size / medians[name] / 1e9 if medians[name] else float("nan"),
                "baseline": baseline,
                "time_ratio_to_baseline": ratio(medians[name], medians[baseline])
                if baseline
                else None,
            }
        )

    # Each ratio is the median of per-round ratios of a case to its baseline, which ran next
    # to it in the same round: a slow phase of a shared machine then cancels out.
    framing = {
        f"{op}@{size}": _paired_ratio(samples[f"{op}@{size}"], samples[f"raw_{kind}@{size}"])
        for size in config.message_sizes
        for op, kind in (("seal", "encrypt"), ("unseal", "decrypt"))
    }
    large = [value for case, value in framing.items() if int(case.split("@")[1]) >= 600 * KIB]
    framing_overhead = max(large) if large else float("nan")
    model_unseal_ratio = _paired_ratio(samples["raw_decrypt_model"], samples["unseal_model_stream"])
    in_memory_ratio = _paired_ratio(samples["raw_decrypt_model"], samples["unseal_model_memory"])
    return {
        "benchmark": "crypto",
        "environment": environment(),
        "config": dataclasses.asdict(config),
        "results": results,
        "framing_ratios": framing,
        "framing_overhead": framing_overhead,
        "model_unseal_ratio": model_unseal_ratio,
        "model_unseal_in_memory_ratio": in_memory_ratio,
        "goals": {
            "framing_overhead_max": FRAMING_GOAL,
            "model_unseal_ratio_min": MODEL_GOAL,
            "framing_met": framing_overhead <= FRAMING_GOAL,
            "model_met": model_unseal_ratio >= MODEL_GOAL,
        },
    }


def _message_ops(
    key: SymmetricKey, raw: AESGCM, plaintext: bytes
) -> dict[str, Callable[[], object]]:
    nonce = os.urandom(12)
    ciphertext = raw.encrypt(nonce, plaintext, None)
    envelope = seal(key, plaintext, context=_CONTEXT)

    def raw_encrypt() -> object:
        return raw.encrypt(os.urandom(12), plaintext, None)

    def seal_op() -> object:
        return seal(key, plaintext, context=_CONTEXT)

    def raw_decrypt() -> object:
        return raw.decrypt(nonce, ciphertext, None)

    def unseal_op() -> object:
        return unseal(key, envelope, context=_CONTEXT)

    return {
        "raw_encrypt": raw_encrypt,
        "seal": seal_op,
        "raw_decrypt": raw_decrypt,
        "unseal": unseal_op,
    }


def _paired_ratio(values: list[float], baselines: list[float]) -> float:
    """Median over rounds of ``value / baseline`` (``nan`` without data)."""
    return median(ratio(v, b) for v, b in zip(values, baselines, strict=True))


def _baseline_of(case: str) -> str | None:
    op, _, size = case.partition("@")
    if op == "seal":
        return f"raw_encrypt@{size}"
    if op == "unseal":
        return f"raw_decrypt@{size}"
    if op in ("unseal_model_stream", "unseal_model_memory"):
        return "raw_decrypt_model"
    return None


def _size(n: int) -> str:
    if n >= MIB:
        return f"{n // MIB} MiB"
    return f"{n // KIB} KiB" if n >= KIB else f"{n} B"


def _print(doc: dict[str, Any], console: Console) -> None:
    rows = []
    for r in doc["results"]:
        ratio_cell = r["time_ratio_to_baseline"]
        rows.append(
            [
                r["operation"],
                _size(r["size_bytes"]),
                r["median_s"] * 1e3,
                r["gb_per_s"],
                r["baseline"] or "-",
                float("nan") if ratio_cell is None else ratio_cell,
            ]
        )
    print_table(
        "sealserve crypto: medians of interleaved repeats (time ratio: lower is better)",
        ["operation", "size", "ms/op", "GB/s", "baseline", "time ratio"],
        rows,
        console=console,
    )
    goals = doc["goals"]
    console.print(
        f"framing_overhead   {doc['framing_overhead']:.3f}  "
        f"(goal <= {goals['framing_overhead_max']}, "
        f"{'met' if goals['framing_met'] else 'NOT met'})"
    )
    console.print(
        f"model_unseal_ratio {doc['model_unseal_ratio']:.3f}  (goal >= "
        f"{goals['model_unseal_ratio_min']}, {'met' if goals['model_met'] else 'NOT met'}; "
        f"from memory {doc['model_unseal_in_memory_ratio']:.3f})"
    )


def _crypto(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON to this file.")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller large sizes and 3 repeats (a smoke run).")
    ] = False,
    repeats: Annotated[
        int | None, typer.Option("--repeats", help="Interleaved repeats per case (default 9).")
    ] = None,
) -> None:
    """Raw AES-256-GCM vs seal/unseal at 1 KiB, 600 KiB, 64 MiB, and streamed model unsealing."""
    config = CryptoBenchConfig.quick() if quick else CryptoBenchConfig()
    if repeats is not None:
        if repeats < 1:
            typer.echo(f"error: --repeats must be >= 1, got {repeats}", err=True)
            raise typer.Exit(2)
        config = dataclasses.replace(config, repeats=repeats)
    console = Console(stderr=True)
    with (
        tempfile.TemporaryDirectory(prefix="sealserve-bench-") as tmp,
        Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
        ) as bar,
    ):
        task = bar.add_task("preparing", total=None)
        state = {"done": 0}

        def advance(message: str) -> None:
            if bar.tasks[0].total is None:
                bar.update(task, total=config.repeats * _case_count(config))
            bar.update(task, completed=state["done"], description=message)
            state["done"] += 1

        doc = run_crypto_bench(config, workdir=Path(tmp), progress=advance)
        bar.update(task, completed=state["done"], description="done")
    _print(doc, Console())
    if json_path is not None:
        write_json(json_path, doc)
        Console().print(f"wrote {json_path}")


def _case_count(config: CryptoBenchConfig) -> int:
    return 4 * len(config.message_sizes) + 4


def register(app: typer.Typer) -> None:
    """Add ``crypto`` to the ``sealserve bench`` group."""
    app.command("crypto")(_crypto)
