"""``sealserve instance …``: run one serverless instance (host + sealed runtime), and its store.

``serve`` starts the untrusted host on a port, launches the runtime through the (simulated)
TEE platform — embedded, or a platform daemon with ``--tee-socket`` — and prints one JSON
ready line when both are up (also written to ``--ready-file``).  ``measurement`` prints the
measurement of the runtime such a host launches: what owners grant and users pin.  ``store``
lists and checks the sealed models of a model store.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sealserve._cli.keyservice import (
    CaBundleOpt,
    DataDirOpt,
    GramineCommandOpt,
    GramineOpt,
    JsonOpt,
    KeyServiceMeasurementOpt,
    PlatformKeyOpt,
    TlsCertOpt,
    TlsKeyOpt,
    emit,
    fail,
    guarded,
    keyservice_url,
    open_launcher,
    resolve_ca_bundle,
    resolve_data_dir,
    tls_files,
)

__all__ = ["app"]

app = typer.Typer(
    help="One serverless instance: the untrusted host and the sealed runtime it launches.",
    no_args_is_help=True,
)
store_app = typer.Typer(
    help="The model store: sealed models, digest-checked.", no_args_is_help=True
)
app.add_typer(store_app, name="store")

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        help="The model store (sealed models only): a directory, or an fsspec URL "
        "(s3://bucket/prefix, file:///srv/models, ...).",
    ),
]


LaunchConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--launch-config",
        help="The runtime's measured launch config as a JSON object (what "
        "runtime_launch_config returns): for hardware backends, whose KeyService pin carries "
        "reference values and hardware roots. Replaces --keyservice-measurement and "
        "--platform-key.",
    ),
]


def _pin(
    launcher: Any,
    data_dir: Path,
    keyservice_measurement: str | None,
    platform_key: Path | None,
    launch_config: Path | None = None,
) -> dict[str, str]:
    """The runtime's measured launch config: the KeyService it trusts."""
    from sealserve.attest import Policy, TrustAnchors
    from sealserve.ecall import pin_from_launch_config, runtime_launch_config

    if launch_config is not None:
        doc = json.loads(launch_config.read_text())
        if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
        ):
            raise ValueError(f"--launch-config '{launch_config}' is not a JSON object of strings")
        pin_from_launch_config(doc)  # refuses what a runtime would refuse
        return doc

    if keyservice_measurement is None:
        if launcher is not None:
            keyservice_measurement = launcher.measurement("keyservice", config={})
        else:
            from sealserve.attest import measure

            keyservice_measurement = measure("keyservice")
    policy = Policy(measurements=frozenset({keyservice_measurement}))
    if platform_key is not None:
        raw = bytes.fromhex(platform_key.read_text().strip())
        trust = TrustAnchors(simulated_platform_keys=frozenset({raw}))
    else:
        trust = TrustAnchors.from_data_dir(data_dir)
    return runtime_launch_config(keyservice_policy=policy, trust=trust)


@app.command()
def serve(
    store: StoreOpt,
    keyservice: Annotated[
        str | None, typer.Option("--keyservice", help="KeyService URL (default: settings).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free).")] = 8080,
    tee_socket: Annotated[
        Path | None,
        typer.Option(
            help="Launch the runtime through this platform daemon (default: an embedded "
            "simulated platform in --data-dir)."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    platform_key: PlatformKeyOpt = None,
    keyservice_measurement: KeyServiceMeasurementOpt = None,
    launch_config: LaunchConfigOpt = None,
    memory_budget_mb: Annotated[
        int, typer.Option(min=1, help="Memory for unsealed models (the EPC budget), MiB.")
    ] = 1024,
    memory_factor: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Budget charged per byte of model (weights, pre-packed copies, activations).",
        ),
    ] = 4.0,
    threads: Annotated[int, typer.Option(min=1, help="onnxruntime threads per model.")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests served at once.")] = 4,
    baseline_mode: Annotated[
        bool,
        typer.Option(
            "--baseline-mode",
            help="SeSeMI's per-request baseline: no key or model cache (for comparisons).",
        ),
    ] = False,
    max_body_mb: Annotated[int, typer.Option(min=1, help="Largest sealed input, MiB.")] = 64,
    timeout_s: Annotated[
        float, typer.Option(min=0.001, help="Deadline of requests that name none, seconds.")
    ] = 60.0,
    inference_memory_mb: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="What the runtime's inferences may allocate at once, MiB "
            "(default: --memory-budget-mb); a request that needs more gets 507.",
        ),
    ] = None,
    body_timeout_s: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Longest wait for a request body's next byte, seconds (slow clients: 408).",
        ),
    ] = 10.0,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write the JSON ready line here too (atomically) once serving."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    attest_at_start: Annotated[
        bool,
        typer.Option(
            "--attest-at-start/--no-attest-at-start",
            help="The runtime attests the KeyService as part of its start (an instance whose "
            "runtime cannot is never ready); off: at its first key release.",
        ),
    ] = True,
    gramine: GramineOpt = None,
    gramine_command: GramineCommandOpt = None,
    named_sockets: Annotated[
        bool,
        typer.Option(
            "--named-sockets",
            help="Hand the runtime named Unix sockets to connect to instead of inherited "
            "descriptors (always so with a launcher that passes none, as Gramine's).",
        ),
    ] = False,
    broker_fd: Annotated[
        int | None,
        typer.Option(
            min=3,
            help="A SOCK_SEQPACKET socket from the platform that started this host: the ready "
            "line and each runtime's data link go there.",
        ),
    ] = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    ca_bundle: CaBundleOpt = None,
) -> None:
    """Serve one instance: the OpenWhisk action contract (/init, /run) and /v1/infer.

    Prints one JSON line when the host listens and the runtime answers; stops cleanly on
    Ctrl-C or SIGTERM.
    """
    from sealserve._log import configure_logging
    from sealserve.instance import HostOptions, InstanceConfig, SupervisorOptions, serve_instance

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level has value {log_level!r}; use DEBUG, INFO, WARNING or ERROR", 2)
    if "://" not in store and not Path(store).is_dir():
        fail(f"--store {store!r} is not a directory", 2)
    folder = resolve_data_dir(data_dir)
    url = keyservice_url(keyservice)
    config = guarded(
        lambda: InstanceConfig(
            store_dir=store,
            keyservice_url=url,
            host=host,
            port=port,
            tls=tls_files(tls_cert, tls_key),
            ca_bundle=resolve_ca_bundle(ca_bundle, folder),
            http=HostOptions(
                concurrency=concurrency,
                max_body_bytes=max_body_mb << 20,
                default_timeout_s=timeout_s,
                body_timeout_s=body_timeout_s,
            ),
            runtime=SupervisorOptions(
                memory_budget_mb=memory_budget_mb,
                memory_factor=memory_factor,
                inference_memory_mb=inference_memory_mb,
                threads=threads,
                workers=concurrency,
                baseline=baseline_mode,
                log_level=level,
                attest_at_start=attest_at_start,
                named_sockets=named_sockets,
            ),
            log_level=level,
        )
    )

    def run() -> int:
        import socket

        from sealserve.instance import HostBroker

        configure_logging(level)
        broker = None
        if broker_fd is not None:
            try:
                broker = HostBroker(socket.socket(fileno=broker_fd))
            except (OSError, ValueError) as exc:
                fail(f"--broker-fd {broker_fd}: {exc}", 2)
        with open_launcher(
            folder, tee_socket, gramine=gramine, gramine_command=gramine_command
        ) as launcher:
            if gramine is not None and launch_config is None:
                pin = launcher.launch_config("runtime")  # the one its manifest fixes
            else:
                pin = _pin(launcher, folder, keyservice_measurement, platform_key, launch_config)
            return serve_instance(
                config,
                launcher=launcher,
                launch_config=pin,
                ready_stream=sys.stdout,
                ready_file=ready_file,
                broker=broker,
            )

    raise typer.Exit(guarded(run))


#: What a host imports, that its template imports once.
_HOST_MODULES = (
    "sealserve.attest",
    "sealserve.ecall",
    "sealserve.instance._app",
    "sealserve.instance._server",
    "sealserve.instance._supervisor",
    "httpx",
    "uvicorn",
)


@app.command(hidden=True)
def zygote(
    control_fd: Annotated[
        int, typer.Option(min=3, help="The platform's SOCK_SEQPACKET control socket.")
    ],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Import everything an instance host needs once, then fork hosts on the platform's
    request (each runs `sealserve instance serve` with the arguments it is given).

    The local platform starts one so that starting an instance costs a fork instead of a
    Python process's imports; it ends when the control socket closes.  The hosts it forks are
    untrusted like any host: nothing here is measured or holds a secret.
    """
    import importlib
    import os
    import socket

    from sealserve._forkserver import ForkRequest, serve_forks
    from sealserve._lifeline import watch_inherited_lifeline
    from sealserve._log import configure_logging, get_logger

    for module in _HOST_MODULES:  # what `instance serve` imports, paid once here
        importlib.import_module(module)
    # ... and what a host's first KeyService client costs: the CA bundle, and the transport
    # (httpcore, h11, trio) httpx imports on its first client; 0.4-1 s of a host's start.
    import httpx

    from sealserve.instance._supervisor import default_verify_context

    httpx.Client(verify=default_verify_context()).close()
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level has value {log_level!r}; use DEBUG, INFO, WARNING or ERROR", 2)
    configure_logging(level)
    log = get_logger("sealserve.instance.zygote")
    control = socket.socket(fileno=control_fd)

    # typer builds its click command tree from the functions' signatures each time the app
    # is called (a fifth of a second here): build it once, here, and run it in each child.
    command = typer.main.get_command(app)

    def run_child(request: ForkRequest) -> int:
        args = list(request.args)
        if args[:1] != ["instance"]:
            raise SystemExit("sealserve instance zygote: it forks `instance ...` commands only")
        sys.argv = ["sealserve", *args]
        watch_inherited_lifeline()
        command.main(args=args[1:], prog_name="sealserve instance")
        return 0

    log.event("instance.zygote_ready", level=logging.WARNING, pid=os.getpid())
    code = serve_forks(control, run_child)
    log.event("instance.zygote_stopped", level=logging.WARNING)
    raise typer.Exit(code)


@app.command()
def measurement(
    data_dir: DataDirOpt = None,
    platform_key: PlatformKeyOpt = None,
    keyservice_measurement: KeyServiceMeasurementOpt = None,
    launch_config: LaunchConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the measurement of the runtime an instance launches (what owners grant).

    The runtime's measured launch config pins the KeyService (its measurement and the
    platform key), so it is computed from the same options ``serve`` takes.
    """
    from sealserve.attest import measure

    folder = resolve_data_dir(data_dir)
    config = guarded(
        lambda: _pin(None, folder, keyservice_measurement, platform_key, launch_config)
    )
    value = guarded(lambda: measure("runtime", config=config))
    emit(json_out, {"entry": "runtime", "measurement": value, "config": config}, value)


@store_app.command("list")
def store_list(store: StoreOpt, json_out: JsonOpt = False) -> None:
    """List the sealed models of a store."""
    from sealserve.instance import open_store

    manifests = guarded(lambda: open_store(store).list())
    if json_out:
        typer.echo(json.dumps([m.to_json() for m in manifests], indent=2))
        return
    if not manifests:
        typer.echo("no models")
        return
    for m in manifests:
        typer.echo(
            f"{m.model_id}  v{m.key_version}  {m.size / 2**20:.1f} MiB  sha256:{m.digest[:16]}..."
        )


@store_app.command("verify")
def store_verify(
    store: StoreOpt,
    model_id: Annotated[str, typer.Argument(help="The model id, <owner_id>/<name>.")],
) -> None:
    """Read a stored model fully and check its digest (exit 1 if it does not match)."""
    from sealserve.instance import open_store

    manifest = guarded(lambda: open_store(store).verify(model_id))
    typer.echo(f"{manifest.model_id}: ok ({manifest.size} bytes, sha256:{manifest.digest})")
