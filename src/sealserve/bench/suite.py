"""``sealserve bench all``: every benchmark, one after the other, each in a fresh process.

Each benchmark runs as its own ``sealserve bench NAME`` process so that one cannot warm or
pollute the next (caches, thread pools, shared memory), writes its JSON (and the ipc plot)
into ``--out``, and prints its own table.  The runtime benchmark writes the cost model that
the packer simulation then uses, so the simulator's costs are measured from the real runtime
in the same run.  A summary of the top-level ratios closes the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

from sealserve.bench._common import print_table

__all__ = ["BENCHMARKS", "commands", "register"]

#: In the order of the layers.
BENCHMARKS: Final = (
    "crypto", "ipc", "keyservice", "runtime", "serve", "upload", "packer", "imports",
)  # fmt: skip


def commands(out: Path, *, quick: bool, only: Sequence[str] = BENCHMARKS) -> list[list[str]]:
    """The ``sealserve bench`` command lines ``all`` runs, in order."""
    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown!r}; known: {', '.join(BENCHMARKS)}")
    q = ["--quick"] if quick else []
    costs = out / "costs.json"
    by_name = {
        "crypto": ["crypto", "--json", str(out / "crypto.json"), *q],
        "ipc": ["ipc", "--json", str(out / "ipc.json"), "--plot", str(out / "ipc.png"), *q],
        "keyservice": ["keyservice", "--json", str(out / "keyservice.json")],
        "runtime": ["runtime", "--json", str(out / "runtime.json"), "--costs-out", str(costs), *q],
        "serve": [
            "serve", "--json", str(out / "serve.json"), *q,
            *(["--costs-update", str(costs)] if "runtime" in only or costs.exists() else []),
        ],
        "upload": ["upload", "--json", str(out / "upload.json"), *q],
        "imports": ["imports", "--json", str(out / "imports.json"), *q],
        "packer": [
            "packer", "--synthetic", "1", "--json", str(out / "packer.json"),
            *(["--costs", str(costs)] if "runtime" in only or costs.exists() else []),
        ],
    }  # fmt: skip
    return [[sys.executable, "-m", "sealserve", "bench", *by_name[name]] for name in only]


def _summary(out: Path) -> list[tuple[str, str, Any]]:
    rows: list[tuple[str, str, Any]] = []
    picks = {
        "crypto.json": ("framing_overhead", "model_unseal_ratio"),
        "keyservice.json": ("releases_per_s", "p50_ms", "trivial_p50_ms"),
        "imports.json": (
            "client_import_s",
            "client_over_httpx",
            "client_over_floor",
            "client_sealserve_modules",
        ),
    }
    for file, keys in picks.items():
        path = out / file
        if path.exists():
            doc = json.loads(path.read_text())
            rows += [(file.removesuffix(".json"), key, doc.get(key)) for key in keys]
            for kind, figures in (doc.get("kinds") or {}).items():
                if kind != "simulated":
                    rows.append(
                        (
                            "keyservice",
                            f"{kind} releases/s ratio",
                            figures.get("releases_per_s_ratio"),
                        )
                    )
    runtime = out / "runtime.json"
    if runtime.exists():
        for model, figures in json.loads(runtime.read_text()).get("models", {}).items():
            rows.append(("runtime", f"{model} sealed/plain", figures.get("sealed_over_plain")))
    serve = out / "serve.json"
    if serve.exists():
        from sealserve.bench.serve import summary_rows

        rows += summary_rows(json.loads(serve.read_text()))
    packer = out / "packer.json"
    if packer.exists():
        for name, figures in json.loads(packer.read_text()).get("policies", {}).items():
            rows.append(("packer", f"{name} GB-s", figures.get("gb_s")))
    return rows


def _all(
    out: Annotated[Path, typer.Option("--out", help="Folder for every benchmark's JSON.")] = Path(
        "benchmarks/results"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Each benchmark's quick mode.")] = False,
    only: Annotated[
        str, typer.Option("--only", help="Comma-separated subset, run in layer order.")
    ] = ",".join(BENCHMARKS),
) -> None:
    """Run every benchmark in a fresh process each, writing JSON into --out."""
    console = Console()
    names = [n.strip() for n in only.split(",") if n.strip()]
    if set(names) - set(BENCHMARKS):
        console.print(
            f"error: --only names unknown benchmarks {sorted(set(names) - set(BENCHMARKS))}; "
            f"known: {', '.join(BENCHMARKS)}"
        )
        raise typer.Exit(2)
    try:
        lines = commands(out, quick=quick, only=[n for n in BENCHMARKS if n in names])
        if set(names) - set(BENCHMARKS):
            raise ValueError(
                f"--only names unknown benchmarks: {sorted(set(names) - set(BENCHMARKS))}"
            )
    except ValueError as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for line in lines:
        name = line[4]
        console.rule(f"[bold]sealserve bench {name}")
        started = time.monotonic()
        code = subprocess.run(line, check=False).returncode
        console.print(f"{name}: exit {code} after {time.monotonic() - started:.0f} s")
        if code != 0:
            failed.append(name)
    print_table(
        f"Summary ({out})", ["benchmark", "figure", "value"], _summary(out), console=console
    )
    if failed:
        console.print(f"failed: {', '.join(failed)}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``all`` to the ``sealserve bench`` group."""
    app.command("all")(_all)
