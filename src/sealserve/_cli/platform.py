"""``sealserve platform …``: what the local platform runs and decides, as a gateway reports it;
sealserve on Ray Serve (``ray serve``) and OpenWhisk packaging (``openwhisk package``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sealserve._cli.gateway import GatewayUrlOpt, check_policy, gateway_url
from sealserve._cli.keyservice import (
    CaBundleOpt,
    DataDirOpt,
    JsonOpt,
    KeyServiceMeasurementOpt,
    PlatformKeyOpt,
    fail,
    guarded,
    keyservice_url,
    resolve_ca_bundle,
    resolve_data_dir,
)

__all__ = ["app"]

app = typer.Typer(
    help=(
        "Serverless platforms: the local platform's instances, GB-seconds, cold starts and "
        "routing decisions; Ray Serve; the OpenWhisk package."
    ),
    no_args_is_help=True,
)


@app.command()
def status(
    gateway: GatewayUrlOpt = None,
    recent: Annotated[int, typer.Option(min=0, help="Routing decisions to show.")] = 10,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the instances, the meters, the counters and the latest routing decisions."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from sealserve.client import GatewayClient

    folder = resolve_data_dir(data_dir)

    def fetch() -> dict[str, Any]:
        with GatewayClient(
            gateway_url(gateway, folder), ca_bundle=resolve_ca_bundle(ca_bundle, folder)
        ) as client:
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
        columns = ("instance", "state", "MB used/size", "models", "in flight", "served", "age s",
                   "GB-s")  # fmt: skip
        for column in columns:
            table.add_column(column)
        for inst in doc["instances"]:
            models = ", ".join(m.rsplit("/", 1)[-1] for m in inst["models"]) or "-"
            if inst["loading"]:
                models += (
                    " (loading " + ", ".join(m.rsplit("/", 1)[-1] for m in inst["loading"]) + ")"
                )
            used = inst.get("resident_mb")
            memory = f"{'-' if used is None else f'{used:.0f}'}/{inst['memory_mb']}"
            table.add_row(
                f"i{inst['instance_id']}", inst["state"], memory, models, str(inst["in_flight"]),
                str(inst["served"]), f"{inst['age_s']:.0f}", f"{inst['gb_s']:.1f}",
            )  # fmt: skip
        console.print(table)
    for decision in doc["recent_decisions"]:
        console.print(f"  {escape(_short(decision['text']))}", soft_wrap=True)


@app.command()
def policies() -> None:
    """List the FnPacker routing policies the platform runs (platform.policy picks one)."""
    from sealserve.packer import POLICY_NAMES
    from sealserve.platform import LIVE_POLICIES

    for name in LIVE_POLICIES:
        typer.echo(name)
    baselines = [name for name in POLICY_NAMES if name not in LIVE_POLICIES]
    if baselines:
        typer.echo(
            f"(simulator baselines, not run live: {', '.join(baselines)}; sealserve bench packer)",
            err=True,
        )


def _short(text: str) -> str:
    """A decision line with the owner id of its model shortened."""
    head, sep, tail = text.partition("/")
    if sep and len(head) == 64:
        return f"{head[:8]}…/{tail}"
    return text


# -- sealserve on Ray Serve, and OpenWhisk packaging -------------------------------------------

ray_app = typer.Typer(
    help="sealserve on Ray Serve: instances as replicas, FnPacker as the request router.",
    no_args_is_help=True,
)
openwhisk_app = typer.Typer(
    help="The instance as an OpenWhisk blackbox action.", no_args_is_help=True
)
app.add_typer(ray_app, name="ray")
app.add_typer(openwhisk_app, name="openwhisk")


@ray_app.command("serve")
def ray_serve(
    store: Annotated[Path, typer.Option("--store", help="Model store (on every node).")],
    tee_socket: Annotated[
        Path, typer.Option(help="Each node's TEE platform daemon socket (same path everywhere).")
    ],
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (e.g. auto, ray://HOST:10001); default: start one."),
    ] = None,
    keyservice: Annotated[
        str | None, typer.Option("--keyservice", help="KeyService URL (default: settings).")
    ] = None,
    keyservice_measurement: KeyServiceMeasurementOpt = None,
    platform_key: PlatformKeyOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[str, typer.Option(help="Gateway address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Gateway port (default: gateway.port).")] = None,
    policy: Annotated[str | None, typer.Option(help="FnPacker policy.")] = None,
    max_instances: Annotated[
        int | None, typer.Option(min=1, help="Most replicas (default: platform.max_instances).")
    ] = None,
    min_replicas: Annotated[
        int, typer.Option(min=0, help="Fewest replicas (0: scale to zero).")
    ] = 0,
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="CPUs of a local Ray (ignored with --address).")
    ] = None,
    replica_cpus: Annotated[
        float, typer.Option(min=0.0, help="CPUs Ray reserves per replica.")
    ] = 1.0,
    app_name: Annotated[
        str, typer.Option("--app", help="Ray Serve application name.")
    ] = "sealserve",
    config: Annotated[Path | None, typer.Option(help="A sealserve TOML settings file.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    stop_timeout: Annotated[
        float,
        typer.Option(
            "--stop-timeout", min=1.0, help="Seconds to stop in; then what is left is killed."
        ),
    ] = 60.0,
) -> None:
    """Deploy sealed instances on Ray Serve and serve the gateway through its handle.

    Connects to --address (or starts a local Ray), deploys the SealedInstance deployment
    (each replica one instance, launched through --tee-socket on its node) with FnPacker's
    request router and autoscaler, then serves the usual gateway API until Ctrl-C; on exit the
    application is deleted (and a local Ray stopped) within --stop-timeout, killing what does
    not stop.  See docs/platforms.md.
    """
    from sealserve._log import configure_logging
    from sealserve.attest import measure
    from sealserve.config import load_settings
    from sealserve.gateway import Gateway, GatewayOptions, GatewayServer
    from sealserve.instance import ModelStore
    from sealserve.platform import ModelCatalog, PlatformConfig

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level has value {log_level!r}; use DEBUG, INFO, WARNING or ERROR", 2)
    check_policy(policy)
    if not store.is_dir():
        fail(f"--store {str(store)!r} is not a directory", 2)
    try:
        from sealserve.platform import ray as on_ray
    except ImportError:
        fail("Ray Serve is not installed: pip install 'sealserve[ray]'", 2)
    loaded = guarded(lambda: load_settings(config))
    folder = resolve_data_dir(data_dir if data_dir is not None else loaded.data_dir)
    overrides: dict[str, Any] = {}
    if policy is not None:
        overrides["policy"] = policy
    if max_instances is not None:
        overrides["max_instances"] = max_instances
    platform_config = guarded(lambda: PlatformConfig.from_settings(loaded, **overrides))
    if platform_config.uses_sizes:
        typer.echo(
            f"note: every Ray Serve replica has one size ({platform_config.instance_memory_mb} "
            f"MB); platform.sizes_mb {list(platform_config.sizes_mb)} is not used",
            err=True,
        )
        platform_config = platform_config.replace(sizes_mb=())
    key_file = platform_key or folder / "tee" / "platform.pub"
    if not key_file.is_file():
        fail(f"no platform key at '{key_file}'; pass --platform-key FILE", 2)
    options = guarded(
        lambda: on_ray.RayOptions(
            store_dir=store.resolve(),
            keyservice_url=keyservice_url(keyservice),
            tee_socket=tee_socket,
            platform_key_file=key_file.resolve(),
            keyservice_measurement=keyservice_measurement or measure("keyservice"),
            run_dir=folder / "run" / "ray",
            platform=platform_config,
            app_name=app_name,
            min_replicas=min_replicas,
            replica_num_cpus=replica_cpus,
            instance_log_level="WARNING" if level in ("INFO", "DEBUG") else level,
        )
    )
    configure_logging(level)
    started = guarded(lambda: on_ray.connect(address, num_cpus=num_cpus))
    try:
        handle = guarded(lambda: on_ray.deploy(options))
        platform = on_ray.RayPlatform(handle, options=options)
        catalog = ModelCatalog(ModelStore(store), memory_factor=platform_config.memory_factor)
        gateway = Gateway(platform, catalog, options=GatewayOptions.from_settings(loaded.gateway))
        server = guarded(
            lambda: GatewayServer(
                gateway, host=host, port=loaded.gateway.port if port is None else port,
                log_level=level,
            )
        )  # fmt: skip

        def ready() -> None:
            typer.echo(
                json.dumps(
                    {"event": "gateway.ready", "url": server.url, "platform": "ray",
                     "app": app_name, "policy": platform.policy}
                )
            )  # fmt: skip

        guarded(lambda: server.serve(on_ready=ready))
    finally:
        # Bounded: a Serve controller or replica that does not stop cannot hold Ctrl-C
        # forever; what does not stop is killed and named in the log.
        on_ray.stop(options, started=started, timeout_s=stop_timeout)


@openwhisk_app.command("package")
def openwhisk_package(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the package into.")],
    keyservice: Annotated[
        str, typer.Option("--keyservice", help="KeyService URL the action's runtime uses.")
    ],
    keyservice_measurement: KeyServiceMeasurementOpt = None,
    platform_key: PlatformKeyOpt = None,
    data_dir: DataDirOpt = None,
    image: Annotated[str | None, typer.Option(help="Docker image reference.")] = None,
    action: Annotated[str, typer.Option(help="OpenWhisk action name.")] = "sealed-instance",
    package: Annotated[str, typer.Option(help="OpenWhisk package name.")] = "sealserve",
    wheel: Annotated[
        Path | None,
        typer.Option(help="sealserve's wheel to install (default: built from this checkout)."),
    ] = None,
    tee_socket: Annotated[
        str,
        typer.Option(
            help="Where the node's TEE platform daemon socket is mounted in the container."
        ),
    ] = "/run/sealserve/tee.sock",
    store: Annotated[
        Path | None, typer.Option("--store", help="Sealed models to bake into the image.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="A sealserve TOML settings file.")] = None,
) -> None:
    """Write a Dockerfile, entrypoint, action spec, wskdeploy manifest, wsk commands and README.

    The image installs sealserve from its own wheel (--wheel, or built from this checkout with
    pip); its runtime is launched by the node's TEE platform daemon (--tee-socket, mounted from
    the node); --platform-key is the public key that pins the KeyService (default: the data
    directory's).  Memory, timeout and concurrency come from the settings
    (platform.instance_memory_mb, gateway.request_timeout_s, platform.instance_concurrency).
    Nothing is built into an image or deployed.
    """
    from sealserve.attest import measure
    from sealserve.config import load_settings
    from sealserve.platform.openwhisk import OpenWhiskOptions, build_wheel, write_package

    loaded = guarded(lambda: load_settings(config))
    folder = resolve_data_dir(data_dir if data_dir is not None else loaded.data_dir)
    key_file = platform_key or folder / "tee" / "platform.pub"
    if not key_file.is_file():
        fail(f"no platform key at '{key_file}'; pass --platform-key FILE", 2)
    extra: dict[str, Any] = {"action": action, "package": package, "tee_socket": tee_socket}
    if image is not None:
        extra["image"] = image
    options = guarded(
        lambda: OpenWhiskOptions.from_settings(
            loaded,
            keyservice_url=keyservice,
            keyservice_measurement=keyservice_measurement or measure("keyservice"),
            **extra,
        )
    )
    wheel_file = wheel if wheel is not None else guarded(lambda: build_wheel(out))
    files = guarded(
        lambda: write_package(
            out, options, wheel_file=wheel_file, platform_key_file=key_file, store_dir=store
        )
    )
    for path in files:
        typer.echo(str(path))


@openwhisk_app.command("run")
def openwhisk_run(
    spec: Annotated[Path, typer.Option(help="The action's spec (action.json of the package).")],
    platform_key: Annotated[
        Path, typer.Option(help="The public key that pins the KeyService (platform.pub).")
    ],
    data_dir: Annotated[Path, typer.Option(help="The host's data directory.")],
    store: Annotated[Path, typer.Option("--store", help="The model store.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="The action's port.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
    cgroup: Annotated[
        Path, typer.Option(help="The container's cgroup directory.", hidden=True)
    ] = Path("/sys/fs/cgroup"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Where the host writes its address.", hidden=True)
    ] = None,
) -> None:
    """The image's entrypoint: this container's limits, then the instance host.

    The model budget comes from the action's memory limit (the container's memory cgroup),
    the concurrency from whether the invoker allows it (__OW_ALLOW_CONCURRENT); the runtime
    is launched by the node's TEE platform daemon at the spec's socket.  Prints the limits
    (one JSON line on stderr), then becomes `sealserve instance serve`.
    """
    import os
    import sys

    from sealserve.platform.openwhisk import action_limits, host_command, read_spec

    options = guarded(lambda: read_spec(spec))
    limits = guarded(lambda: action_limits(options, env=os.environ, cgroup_root=cgroup))
    socket_path = Path(options.tee_socket)
    if not socket_path.is_socket():
        fail(
            f"no TEE platform daemon socket at {options.tee_socket}: mount the node's daemon "
            "socket into the container (see the package's README)",
            2,
        )
    typer.echo(json.dumps({"event": "action.limits", **limits.to_json()}), err=True)
    command = host_command(
        options, limits, python=sys.executable, data_dir=data_dir, store_dir=store,
        platform_key=platform_key, port=port, host=host, ready_file=ready_file,
    )  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # noqa: S606 - our own command line, no shell
