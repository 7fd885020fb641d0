"""``sealserve gateway …``: the public inference API, alone or as a client of it.

``serve`` runs the gateway and the local platform against a KeyService and a TEE platform
daemon that already run (``sealserve up`` runs all of them); ``models`` lists what a gateway
serves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sealserve._cli.keyservice import (
    CaBundleOpt,
    DataDirOpt,
    JsonOpt,
    KeyServiceMeasurementOpt,
    PlatformKeyOpt,
    TlsCertOpt,
    TlsKeyOpt,
    fail,
    guarded,
    keyservice_url,
    resolve_ca_bundle,
    resolve_data_dir,
    settings,
    tls_files,
)

__all__ = ["GatewayUrlOpt", "SizesOpt", "app", "check_policy", "gateway_url", "parse_sizes"]

app = typer.Typer(help="The public inference API (sealed envelopes only).", no_args_is_help=True)

GatewayUrlOpt = Annotated[
    str | None, typer.Option("--gateway", help="Gateway URL (default: from the settings).")
]


SizesOpt = Annotated[
    str | None,
    typer.Option(
        "--sizes-mb",
        help="Other instance sizes the sealserve policy may start, e.g. 512,1024; '' for none "
        "(default: platform.sizes_mb).",
    ),
]


def parse_sizes(text: str) -> tuple[int, ...]:
    """``--sizes-mb``: comma-separated MB (empty: none); a bad value is a one-line error."""
    parts = [part.strip() for part in text.split(",")] if text.strip() else []
    try:
        sizes = tuple(int(part, 10) for part in parts)
    except ValueError:
        fail(
            f"--sizes-mb has value {text!r}; give sizes in MB separated by commas, e.g. 512,1024", 2
        )
    if any(size < 1 for size in sizes):
        fail(f"--sizes-mb has value {text!r}; every size must be at least 1 MB", 2)
    return sizes


def check_policy(policy: str | None) -> None:
    """``--policy`` names a policy the live platform runs (a one-line error if not)."""
    from sealserve.packer import POLICY_NAMES
    from sealserve.platform import LIVE_POLICIES

    if policy is None or policy in LIVE_POLICIES:
        return
    if policy in POLICY_NAMES:
        fail(
            f"--policy {policy} is a simulator baseline (sealserve bench packer): it sizes each "
            "model's instance for that model, a measured runtime of its own per model in a TEE; "
            f"use one of {', '.join(LIVE_POLICIES)}",
            2,
        )
    fail(f"--policy has value {policy!r}; use one of {', '.join(LIVE_POLICIES)}", 2)


def gateway_url(url: str | None, data_dir: Path | None = None) -> str:
    """The gateway to talk to: ``url``, else the one a ``sealserve up`` on ``data_dir``
    announced (``<data-dir>/run/up.json``), else the settings' (HTTPS when ``tls.cert`` is
    set)."""
    if url:
        return url
    if data_dir is not None:
        try:
            announced = json.loads((data_dir / "run" / "up.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            announced = None
        if isinstance(announced, dict) and isinstance(announced.get("gateway_url"), str):
            return str(announced["gateway_url"])
    current = settings()
    scheme = "https" if current.tls.cert is not None else "http"
    return f"{scheme}://{current.gateway.host}:{current.gateway.port}"


@app.command()
def serve(
    store: Annotated[
        str,
        typer.Option(
            "--store", help="The model store: a directory, or an fsspec URL (s3://bucket/prefix)."
        ),
    ],
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
    sizes_mb: SizesOpt = None,
    config: Annotated[Path | None, typer.Option(help="A sealserve TOML settings file.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    ca_bundle: CaBundleOpt = None,
    web: Annotated[
        bool, typer.Option("--web", help="Serve the browser client at /web/ (gateway.web).")
    ] = False,
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
    from sealserve.deploy import platform_health, platform_scrape_targets
    from sealserve.gateway import (
        Gateway,
        GatewayOptions,
        GatewayServer,
        UploadOptions,
        UploadService,
    )
    from sealserve.instance import open_store
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
    check_policy(policy)
    if "://" not in store and not Path(store).is_dir():
        fail(f"--store {store!r} is not a directory", 2)
    loaded = guarded(lambda: load_settings(config))
    folder = data_dir if data_dir is not None else loaded.data_dir
    overrides: dict[str, Any] = {} if policy is None else {"policy": policy}
    if sizes_mb is not None:
        overrides["sizes_mb"] = parse_sizes(sizes_mb)
    platform_config = guarded(lambda: PlatformConfig.from_settings(loaded, **overrides))
    key_file = platform_key or folder / "tee" / "platform.pub"
    if not key_file.is_file():
        fail(f"no platform key at '{key_file}'; pass --platform-key FILE", 2)
    run_dir = resolve_data_dir(folder) / "run" / "gateway"
    tls = guarded(lambda: tls_files(tls_cert, tls_key, loaded))
    bundle = resolve_ca_bundle(ca_bundle, resolve_data_dir(folder))
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
            tls=tls,
            ca_bundle=bundle,
        )
    )
    configure_logging(level)
    registry = CollectorRegistry()
    model_store = guarded(lambda: open_store(store))
    catalog = ModelCatalog(model_store, memory_factor=platform_config.memory_factor)
    uploads = None
    if loaded.gateway.uploads:
        staging = (model_store.staging_dir() or resolve_data_dir(folder)) / "uploads"
        uploads = guarded(
            lambda: UploadService(
                model_store,
                staging_dir=staging,
                options=UploadOptions.from_settings(loaded.gateway),
                registry=registry,
            )
        )
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
        options=GatewayOptions.from_settings(
            dataclasses.replace(loaded.gateway, web=True) if web else loaded.gateway
        ),
        registry=registry,
        on_startup=open_platform,
        on_shutdown=platform.close,
        uploads=uploads,
        health=platform_health(platform),
        scrape_targets=lambda: platform_scrape_targets(
            platform, server.url, keyservice_url(keyservice)
        ),
    )
    server = guarded(
        lambda: GatewayServer(
            gateway, host=host, port=loaded.gateway.port if port is None else port,
            log_level=level, tls=tls,
        )
    )  # fmt: skip

    def ready() -> None:
        typer.echo(
            json.dumps({"event": "gateway.ready", "url": server.url, "policy": platform.policy})
        )

    guarded(lambda: server.serve(on_ready=ready))


@app.command()
def models(
    gateway: GatewayUrlOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the models a gateway serves (ids, sizes, key versions)."""
    from sealserve.client import GatewayClient

    folder = resolve_data_dir(data_dir)

    def fetch() -> list[dict[str, Any]]:
        with GatewayClient(
            gateway_url(gateway, folder), ca_bundle=resolve_ca_bundle(ca_bundle, folder)
        ) as client:
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
