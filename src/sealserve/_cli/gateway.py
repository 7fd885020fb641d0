"""``sealserve gateway …``: the public inference API, alone or as a client of it.

``serve`` runs the gateway and the local platform against a KeyService and a TEE platform
daemon that already run (``sealserve up`` runs all of them); ``models`` lists what a gateway
serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sealserve._cli.keyservice import (
    DataDirOpt,
    JsonOpt,
    KeyServiceMeasurementOpt,
    PlatformKeyOpt,
    fail,
    guarded,
    keyservice_url,
    resolve_data_dir,
    settings,
)

__all__ = ["GatewayUrlOpt", "app", "gateway_url"]

app = typer.Typer(help="The public inference API (sealed envelopes only).", no_args_is_help=True)

GatewayUrlOpt = Annotated[
    str | None, typer.Option("--gateway", help="Gateway URL (default: from the settings).")
]


def gateway_url(url: str | None) -> str:
    if url:
        return url
    gw = settings().gateway
    return f"http://{gw.host}:{gw.port}"


@app.command()
def serve(
    store: Annotated[Path, typer.Option("--store", help="Model store directory.")],
    tee_socket: Annotated[
        Path, typer.Option(help="The TEE platform daemon that launches the runtimes.")
    ],
    keyservice: Annotated[
        str | None, typer.Option("--keyservice", help="KeyService URL (default: settings).")
    ] = None,
    keyservice_measurement: KeyServiceMeasurementOpt = None,
    platform_key: PlatformKeyOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: gateway.port; 0: any).")] = None,
    policy: Annotated[str | None, typer.Option(help="FnPacker policy.")] = None,
    config: Annotated[Path | None, typer.Option(help="A sealserve TOML settings file.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve the gateway and the local platform until Ctrl-C or SIGTERM.

    Instances are launched through --tee-socket and pinned to the KeyService of
    --keyservice-measurement (default: the installed code's) on the platform of --platform-key
    (default: <data-dir>/tee/platform.pub).  Logs are JSON lines on stderr.
    """
    from prometheus_client import CollectorRegistry

    from sealserve._log import configure_logging
    from sealserve.attest import measure
    from sealserve.config import load_settings
    from sealserve.gateway import Gateway, GatewayOptions, GatewayServer
    from sealserve.instance import ModelStore
    from sealserve.packer import POLICY_NAMES
    from sealserve.platform import (
        LocalBackend,
        LocalOptions,
        ModelCatalog,
        Platform,
        PlatformConfig,
    )

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level has value {log_level!r}; use DEBUG, INFO, WARNING or ERROR", 2)
    if policy is not None and policy not in POLICY_NAMES:
        fail(f"--policy has value {policy!r}; use one of {', '.join(POLICY_NAMES)}", 2)
    if not store.is_dir():
        fail(f"--store {str(store)!r} is not a directory", 2)
    loaded = guarded(lambda: load_settings(config))
    folder = data_dir if data_dir is not None else loaded.data_dir
    overrides: dict[str, Any] = {} if policy is None else {"policy": policy}
    platform_config = guarded(lambda: PlatformConfig.from_settings(loaded, **overrides))
    key_file = platform_key or folder / "tee" / "platform.pub"
    if not key_file.is_file():
        fail(f"no platform key at '{key_file}'; pass --platform-key FILE", 2)
    run_dir = resolve_data_dir(folder) / "run" / "gateway"
    options = guarded(
        lambda: LocalOptions(
            store_dir=store,
            keyservice_url=keyservice_url(keyservice),
            tee_socket=tee_socket,
            platform_key_file=key_file,
            keyservice_measurement=keyservice_measurement or measure("keyservice"),
            run_dir=run_dir,
            memory_factor=platform_config.memory_factor,
            threads=platform_config.threads,
            log_level="WARNING" if level in ("INFO", "DEBUG") else level,
            host=host,
        )
    )
    configure_logging(level)
    registry = CollectorRegistry()
    catalog = ModelCatalog(ModelStore(store), memory_factor=platform_config.memory_factor)
    platform = Platform(
        LocalBackend(options),
        config=platform_config,
        model_memory_mb=catalog.memory_mb,
        registry=registry,
    )

    async def open_platform() -> None:
        await platform.open()

    gateway = Gateway(
        platform,
        catalog,
        options=GatewayOptions.from_settings(loaded.gateway),
        registry=registry,
        on_startup=open_platform,
        on_shutdown=platform.close,
    )
    server = guarded(
        lambda: GatewayServer(
            gateway, host=host, port=loaded.gateway.port if port is None else port,
            log_level=level,
        )
    )  # fmt: skip

    def ready() -> None:
        typer.echo(
            json.dumps({"event": "gateway.ready", "url": server.url, "policy": platform.policy})
        )

    guarded(lambda: server.serve(on_ready=ready))


@app.command()
def models(gateway: GatewayUrlOpt = None, json_out: JsonOpt = False) -> None:
    """List the models a gateway serves (ids, sizes, key versions)."""
    from sealserve.client import GatewayClient

    def fetch() -> list[dict[str, Any]]:
        with GatewayClient(gateway_url(gateway)) as client:
            return client.models()

    found = guarded(fetch)
    if json_out:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("no models")
        return
    for m in found:
        typer.echo(f"{m['model_id']}  v{m['key_version']}  {m['size'] / 2**20:.1f} MiB")
