"""Measuring the packer's cost model on this machine, for ``sealserve bench packer``.

For each model of the zoo: a load is reading the file and creating an onnxruntime session, an
inference is the median batch-1 run with 2 threads, the memory is the resident-set growth of a
fresh process that loads the model and runs it once; a cold start is a fresh Python process
that imports onnxruntime and creates a session for the smallest model.  Each figure's method is
recorded in the cost model.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sealserve.bench._common import environment, interleaved
from sealserve.errors import ModelError
from sealserve.packer import CostModel, ModelCosts

__all__ = ["measure_costs"]

_THREADS = 2

# A fresh process: resident memory after importing onnxruntime, then after loading the model
# and running it once.  /proc/self/statm is Linux's; elsewhere the peak (ru_maxrss) stands in.
_MEMORY_CHILD = r"""
import json, os, sys
import numpy as np
import onnxruntime as ort

def rss_mb():
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

base = rss_mb()
so = ort.SessionOptions()
so.intra_op_num_threads = 2
so.inter_op_num_threads = 1
with open(sys.argv[1], "rb") as fh:
    data = fh.read()
sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
del data
inputs = dict(np.load(sys.argv[2]))
sess.run(None, inputs)
print(json.dumps({"base_mb": base, "after_mb": rss_mb()}))
"""

_COLD_CHILD = r"""
import sys
import onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 2
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
"""

_METHODS = {
    "load_ms": "median of 3 rounds (models interleaved): read the .onnx file and create an "
    "onnxruntime session from its bytes (CPU, 2 intra-op threads) in the measuring process; "
    "no fetch, unseal or key release (the sealed runtime adds them)",
    "infer_ms": "median of 15 batch-1 runs (5 per round, after 2 warm-up runs) on the zoo's "
    "example inputs, 2 intra-op threads, one session alive at a time",
    "memory_mb": "resident-set growth of a fresh Python process that imported onnxruntime, "
    "loaded the model from its bytes and ran it once (/proc/self/statm)",
    "runtime_base_mb": "median resident set of those fresh processes after importing numpy "
    "and onnxruntime, before any model",
    "cold_start_ms": "median of 3 runs, wall time from spawning a fresh Python process to its "
    "exit after importing onnxruntime and creating a session for the smallest model; no "
    "sandbox, enclave or attestation (the sealed runtime adds them)",
}


def measure_costs(
    *,
    model_dir: Path,
    models: Sequence[str] | None = None,
    console: Console | None = None,
    rounds: int = 3,
    runs_per_round: int = 5,
) -> CostModel:
    """Measure the cost model of the zoo's models on this machine (see the module docs)."""
    import onnxruntime as ort

    from sealserve.models import build, list_specs

    console = console or Console(stderr=True)
    specs = [s for s in list_specs() if models is None or s.name in models]
    if not specs:
        raise ValueError(f"no zoo model matches {list(models or [])!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _THREADS
    options.inter_op_num_threads = 1
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("building zoo models", total=len(specs))
        for spec in specs:
            progress.update(task, description=f"building {spec.name}")
            try:
                paths[spec.name] = build(spec.name, model_dir)
            except (ModelError, OSError) as exc:
                skipped[spec.name] = str(exc)
            progress.advance(task)
        if not paths:
            raise ValueError(f"no zoo model could be built: {skipped}")
        examples = {s.name: s.example_inputs(0) for s in specs if s.name in paths}
        inputs_dir = Path(tempfile.mkdtemp(prefix="sealserve-costs-"))
        try:
            task = progress.add_task("measuring loads and inference", total=rounds * len(paths))

            def measure(name: str, path: Path) -> Callable[[], tuple[float, list[float]]]:
                # One session alive at a time: the idle threads of other sessions would spin
                # and steal the cores from the one being timed.
                def once() -> tuple[float, list[float]]:
                    started = time.perf_counter()
                    sess = ort.InferenceSession(
                        path.read_bytes(), options, providers=["CPUExecutionProvider"]
                    )
                    load = time.perf_counter() - started
                    for _ in range(2):
                        sess.run(None, examples[name])
                    runs = []
                    for _ in range(runs_per_round):
                        started = time.perf_counter()
                        sess.run(None, examples[name])
                        runs.append(time.perf_counter() - started)
                    del sess
                    progress.advance(task)
                    return load, runs

                return once

            rounds_out = interleaved({n: measure(n, p) for n, p in paths.items()}, repeats=rounds)
            loads = {n: [load for load, _ in out] for n, out in rounds_out.items()}
            infers = {n: [t for _, runs in out for t in runs] for n, out in rounds_out.items()}
            task = progress.add_task("measuring memory (fresh processes)", total=len(paths))
            memory: dict[str, float] = {}
            bases: list[float] = []
            for name, path in paths.items():
                npz = inputs_dir / f"{name}.npz"
                np.savez(npz, **examples[name])  # type: ignore[arg-type]
                out = _child(_MEMORY_CHILD, str(path), str(npz))
                figures = json.loads(out)
                bases.append(float(figures["base_mb"]))
                memory[name] = max(1.0, float(figures["after_mb"]) - float(figures["base_mb"]))
                progress.advance(task)
            smallest = min(paths, key=lambda n: paths[n].stat().st_size)
            task = progress.add_task(f"measuring cold starts ({smallest})", total=3)
            colds = []
            for _ in range(3):
                started = time.perf_counter()
                _child(_COLD_CHILD, str(paths[smallest]))
                colds.append(time.perf_counter() - started)
                progress.advance(task)
        finally:
            for leftover in inputs_dir.iterdir():
                leftover.unlink()
            inputs_dir.rmdir()
    methods = dict(_METHODS)
    methods["cold_start_model"] = smallest
    if skipped:
        methods["skipped"] = "; ".join(f"{n}: {why}" for n, why in skipped.items())
    return CostModel(
        cold_start_s=statistics.median(colds),
        runtime_base_mb=statistics.median(bases),
        models={
            name: ModelCosts(
                load_s=statistics.median(loads[name]),
                infer_s=statistics.median(infers[name]),
                memory_mb=memory[name],
                file_mb=paths[name].stat().st_size / 2**20,
            )
            for name in paths
        },
        source="onnxruntime",
        methods=methods,
        environment=environment(),
    )


def _child(script: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(_THREADS))
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"measurement process failed: {exc.stderr.strip()[-500:]}") from exc
    return done.stdout
