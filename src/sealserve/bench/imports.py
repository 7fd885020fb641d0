"""``sealserve bench imports``: what ``import sealserve.client`` costs a user's program.

The client SDK depends on :mod:`sealserve.protocol`, ``crypto`` and ``attest`` only, so a
program that seals inputs does not load the web server, the database layer, Prometheus or
onnxruntime.  Each case runs in a fresh interpreter (nothing cached in ``sys.modules``),
interleaved over the repeats, and reports the wall time of its import statement:

* ``httpx`` — ``import httpx`` alone: an HTTP client library, for scale;
* ``floor`` — the client's third-party floor (httpx, numpy, cryptography's AEAD and HPKE
  primitives): what any client of this design pays; the baseline of the ratio;
* ``client`` — ``import sealserve.client``.

It also lists the sealserve modules the client loads and checks that none of the heavy
third-party packages is among the loaded modules.  Goal: at most 0.3 s on the build machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

import sealserve
from sealserve.bench._common import (
    environment,
    interleaved,
    median,
    print_table,
    ratio,
    write_json,
)

__all__ = ["HEAVY_MODULES", "ImportBenchConfig", "register", "run_import_bench"]

#: Packages the client must not load (the servers', the database's, the runtime's).
HEAVY_MODULES: Final = (
    "fastapi",
    "onnx",
    "onnxruntime",
    "prometheus_client",
    "sqlalchemy",
    "starlette",
    "uvicorn",
)
GOAL_S: Final = 0.3

_CASES: Final = {
    "httpx": "import httpx\n",
    "floor": (
        "import httpx, numpy\n"
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
        "from cryptography.hazmat.primitives.asymmetric import ed25519, x25519\n"
    ),
    "client": "import sealserve.client\n",
}
_CHILD: Final = """
import json, sys, time
started = time.perf_counter()
exec(compile(sys.argv[1], "<case>", "exec"))
elapsed = time.perf_counter() - started
print(json.dumps({"s": elapsed, "modules": sorted(sys.modules)}))
"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ImportBenchConfig:
    """Fresh interpreters per case and round."""

    repeats: int = 9

    @classmethod
    def quick(cls) -> ImportBenchConfig:
        return cls(repeats=3)


def _run_case(code: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, code], capture_output=True, text=True, check=True
    )
    doc: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc


def _package_modules() -> int:
    root = Path(sealserve.__file__).parent
    return sum(1 for _ in root.rglob("*.py"))


def run_import_bench(config: ImportBenchConfig) -> dict[str, Any]:
    """Run the cases (see the module docstring); the JSON-ready results."""
    cases: dict[str, Callable[[], dict[str, Any]]] = {
        name: functools.partial(_run_case, code) for name, code in _CASES.items()
    }
    runs = interleaved(cases, repeats=config.repeats)
    httpx_s = median(r["s"] for r in runs["httpx"])
    floor_s = median(r["s"] for r in runs["floor"])
    client_s = median(r["s"] for r in runs["client"])
    loaded = runs["client"][-1]["modules"]
    ours = sorted(m for m in loaded if m == "sealserve" or m.startswith("sealserve."))
    heavy = sorted(m for m in loaded if m in HEAVY_MODULES)
    return {
        "benchmark": "imports",
        "environment": environment(),
        "repeats": config.repeats,
        "httpx_import_s": httpx_s,
        "floor_import_s": floor_s,
        "client_import_s": client_s,
        "client_over_floor": ratio(client_s, floor_s),
        "client_over_httpx": ratio(client_s, httpx_s),
        "client_sealserve_modules": len(ours),
        "sealserve_modules": _package_modules(),
        "client_modules_total": len(loaded),
        "client_heavy_modules": heavy,
        "sealserve_modules_loaded": ours,
        "goal_s": GOAL_S,
        "goal_met": client_s <= GOAL_S and not heavy,
    }


def _print(doc: dict[str, Any], console: Console) -> None:
    print_table(
        "import sealserve.client (fresh interpreter, median)",
        ["case", "seconds", "x floor", "x httpx"],
        [
            (
                "httpx",
                doc["httpx_import_s"],
                ratio(doc["httpx_import_s"], doc["floor_import_s"]),
                1.0,
            ),
            (
                "floor (httpx, numpy, cryptography)",
                doc["floor_import_s"],
                1.0,
                ratio(doc["floor_import_s"], doc["httpx_import_s"]),
            ),
            (
                "sealserve.client",
                doc["client_import_s"],
                doc["client_over_floor"],
                doc["client_over_httpx"],
            ),
        ],
        console=console,
    )
    console.print(
        f"client_import_s {doc['client_import_s']:.3f}  (goal <= {doc['goal_s']}, "
        f"{'met' if doc['goal_met'] else 'NOT met'}); sealserve modules loaded "
        f"{doc['client_sealserve_modules']} of {doc['sealserve_modules']}; heavy modules "
        f"loaded: {', '.join(doc['client_heavy_modules']) or 'none'}"
    )


def _imports(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON to this file.")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="3 repeats (a smoke run).")] = False,
    repeats: Annotated[
        int | None, typer.Option("--repeats", help="Interleaved repeats per case (default 9).")
    ] = None,
) -> None:
    """Import time and modules of ``import sealserve.client`` against its library floor."""
    config = ImportBenchConfig.quick() if quick else ImportBenchConfig()
    if repeats is not None:
        if repeats < 1:
            typer.echo(f"error: --repeats must be >= 1, got {repeats}", err=True)
            raise typer.Exit(2)
        config = dataclasses.replace(config, repeats=repeats)
    doc = run_import_bench(config)
    console = Console()
    _print(doc, console)
    if json_path is not None:
        write_json(json_path, doc)
        console.print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``imports`` to the ``sealserve bench`` group."""
    app.command("imports")(_imports)
