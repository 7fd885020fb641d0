"""``sealserve platform …``: what the local platform runs and decides, as a gateway reports it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from sealserve._cli.gateway import GatewayUrlOpt, gateway_url
from sealserve._cli.keyservice import JsonOpt, guarded

__all__ = ["app"]

app = typer.Typer(
    help="The local platform: instances, GB-seconds, cold starts, routing decisions.",
    no_args_is_help=True,
)


@app.command()
def status(
    gateway: GatewayUrlOpt = None,
    recent: Annotated[int, typer.Option(min=0, help="Routing decisions to show.")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Show the instances, the meters, the counters and the latest routing decisions."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from sealserve.client import GatewayClient

    def fetch() -> dict[str, Any]:
        with GatewayClient(gateway_url(gateway)) as client:
            return client.platform(recent=recent)

    doc = guarded(fetch)
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
        return
    console = Console(highlight=False)
    counters = doc["counters"]
    console.print(
        f"policy [bold]{doc['policy']}[/bold]: {len(doc['instances'])} instances alive, "
        f"{doc['in_flight']} requests in flight ({doc['waiting']} waiting); "
        f"{doc['gb_seconds']:.1f} GB-s billed; {counters['served']} served, "
        f"{counters['cold_starts']} cold starts, {counters['model_loads']} model loads, "
        f"{counters['scaled_to_zero']} scaled to zero, {counters['instances_replaced']} replaced"
    )
    if doc["instances"]:
        table = Table(show_header=True, header_style="bold")
        for column in ("instance", "state", "models", "in flight", "served", "age s", "GB-s"):
            table.add_column(column)
        for inst in doc["instances"]:
            models = ", ".join(m.rsplit("/", 1)[-1] for m in inst["models"]) or "-"
            if inst["loading"]:
                models += (
                    " (loading " + ", ".join(m.rsplit("/", 1)[-1] for m in inst["loading"]) + ")"
                )
            table.add_row(
                f"i{inst['instance_id']}", inst["state"], models, str(inst["in_flight"]),
                str(inst["served"]), f"{inst['age_s']:.0f}", f"{inst['gb_s']:.1f}",
            )  # fmt: skip
        console.print(table)
    for decision in doc["recent_decisions"]:
        console.print(f"  {escape(_short(decision['text']))}", soft_wrap=True)


@app.command()
def policies() -> None:
    """List the FnPacker routing policies (platform.policy picks one)."""
    from sealserve.packer import POLICY_NAMES

    for name in POLICY_NAMES:
        typer.echo(name)


def _short(text: str) -> str:
    """A decision line with the owner id of its model shortened."""
    head, sep, tail = text.partition("/")
    if sep and len(head) == 64:
        return f"{head[:8]}…/{tail}"
    return text
