"""The ``sealserve`` command.

Each command group lives in its own module under :mod:`sealserve._cli`; this module only
assembles them.  Run ``sealserve --help`` for the list.
"""

from __future__ import annotations

import typer

from sealserve import __version__
from sealserve._cli import (
    attest,
    bench,
    gateway,
    instance,
    keyservice,
    models,
    owner,
    platform,
    up,
    user,
)
from sealserve._lifeline import watch_inherited_lifeline

__all__ = ["app", "main"]

app = typer.Typer(
    name="sealserve",
    help="Serverless inference on sensitive data: only an attested runtime sees plaintext.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sealserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Serverless inference on sensitive data: only an attested runtime sees plaintext."""


app.add_typer(bench.app, name="bench")
app.add_typer(models.app, name="models")
app.add_typer(keyservice.app, name="keyservice")
app.add_typer(owner.app, name="owner")
app.add_typer(user.app, name="user")
app.add_typer(attest.app, name="attest")
app.add_typer(instance.app, name="instance")
app.add_typer(up.app)  # one command: sealserve up
app.add_typer(gateway.app, name="gateway")
app.add_typer(platform.app, name="platform")


def main() -> None:
    """Entry point of the ``sealserve`` console script."""
    watch_inherited_lifeline()
    app()
