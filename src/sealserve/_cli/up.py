"""``sealserve up``: the whole system on this machine, until Ctrl-C.

It starts the simulated TEE's platform daemon, the KeyService (launched through it, so it
attests), the local platform and the gateway, all on 127.0.0.1 with one data directory; prints
where each listens and the measurements clients pin and owners grant; and stops everything on
Ctrl-C or SIGTERM, leaving no process and no shared memory behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from sealserve._cli.gateway import SizesOpt, check_policy, parse_sizes
from sealserve._cli.keyservice import DataDirOpt, fail, guarded
from sealserve.config import load_settings

__all__ = ["app", "default_runtime_measurement", "run_info"]

app = typer.Typer()

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def run_info(data_dir: Path) -> dict[str, Any] | None:
    """What a running ``sealserve up`` on ``data_dir`` says of itself, if one runs."""
    path = data_dir / "run" / "up.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def default_runtime_measurement(data_dir: Path) -> str:
    """The measurement of the runtime that the installed code launches on the platform of
    ``data_dir``, pinned to the KeyService of the installed code (default settings): what
    ``sealserve instance measurement`` prints, computed here rather than read from the host."""
    from sealserve.attest import Policy, TrustAnchors, measure
    from sealserve.ecall import runtime_launch_config

    keyservice = measure("keyservice")
    config = runtime_launch_config(
        keyservice_policy=Policy(measurements=frozenset({keyservice})),
        trust=TrustAnchors.from_data_dir(data_dir),
    )
    return measure("runtime", config=config)


@contextlib.contextmanager
def _log_stream(path: Path) -> Iterator[TextIO]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a", buffering=1, encoding="utf-8") as stream:
        yield stream


@app.command()
def up(
    data_dir: DataDirOpt = None,
    config: Annotated[Path | None, typer.Option(help="A sealserve TOML settings file.")] = None,
    host: Annotated[str, typer.Option(help="Address every service listens on.")] = "127.0.0.1",
    keyservice_port: Annotated[
        int | None, typer.Option(help="KeyService port (default: keyservice.port; 0: any).")
    ] = None,
    gateway_port: Annotated[
        int | None, typer.Option(help="Gateway port (default: gateway.port; 0: any).")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="FnPacker policy (default: platform.policy).")
    ] = None,
    max_instances: Annotated[
        int | None, typer.Option(min=1, help="Instances alive at once, at most.")
    ] = None,
    keep_alive_s: Annotated[
        float | None, typer.Option(min=0.001, help="Idle seconds before an instance stops.")
    ] = None,
    sizes_mb: SizesOpt = None,
    costs: Annotated[
        Path | None,
        typer.Option(help="A measured cost model (bench runtime --costs-out) for the router."),
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Also write where everything listens here (JSON).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    tee: Annotated[
        str | None,
        typer.Option(
            help="Evidence backend (default: attest.backend): simulated, tsm, tpm, azure-cvm, "
            "auto. Hardware backends read the rest of [attest] (tpm_tcti, tpm_ak...) and "
            "keyservice.tpm_roots from the settings."
        ),
    ] = None,
    web: Annotated[
        bool,
        typer.Option(
            "--web",
            help="Serve the browser client's page at <gateway>/web/ (gateway.web; off by "
            "default). The gateway serves it, so a user trusts the gateway for that code: "
            "docs/web.md.",
        ),
    ] = False,
    reference_values: Annotated[
        list[Path] | None,
        typer.Option(
            "--reference-values",
            help="Reference values of the VM image every policy pins (hardware backends; "
            "repeatable). With a TPM and none given, its boot PCRs are recorded.",
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="HTTPS everywhere, with a throwaway local CA made at start "
            "(<data-dir>/tls/ca.pem: what clients trust; the owner and user commands on this "
            "data dir find it). Without it, tls.cert/tls.key of the settings, if set.",
        ),
    ] = False,
) -> None:
    """Start the TEE platform daemon, the KeyService, the gateway and the local platform.

    Everything listens on 127.0.0.1 and keeps its state in the data directory; logs go to
    <data-dir>/logs.  Ctrl-C (or SIGTERM) stops it all cleanly.
    """
    from sealserve._log import configure_logging
    from sealserve.deploy import DeploymentOptions, LocalDeployment
    from sealserve.packer import CostModel
    from sealserve.platform import PlatformConfig

    level = log_level.upper()
    if level not in _LEVELS:
        fail(f"--log-level has value {log_level!r}; use DEBUG, INFO, WARNING or ERROR", 2)
    check_policy(policy)
    settings = guarded(lambda: load_settings(config))
    if tee is not None:
        from sealserve.config import AttestSettings

        attest = guarded(lambda: dataclasses.replace(settings.attest, backend=tee))
        assert isinstance(attest, AttestSettings)
        settings = settings.replace(attest=attest)
    if web:
        gateway_settings = dataclasses.replace(settings.gateway, web=True)
        settings = settings.replace(gateway=gateway_settings)
    from sealserve.attest import ReferenceValues

    references: tuple[ReferenceValues, ...] = ()
    if reference_values:
        references = guarded(
            lambda: tuple(ReferenceValues.from_file(path) for path in reference_values or [])
        )
    folder = (data_dir if data_dir is not None else settings.data_dir).expanduser().resolve()
    overrides: dict[str, Any] = {}
    if policy is not None:
        overrides["policy"] = policy
    if max_instances is not None:
        overrides["max_instances"] = max_instances
    if keep_alive_s is not None:
        overrides["keep_alive_s"] = keep_alive_s
    if sizes_mb is not None:
        overrides["sizes_mb"] = parse_sizes(sizes_mb)
    platform_config = guarded(lambda: PlatformConfig.from_settings(settings, **overrides))
    priors = guarded(lambda: CostModel.load(costs)) if costs is not None else None
    options = guarded(
        lambda: DeploymentOptions(
            data_dir=folder,
            settings=settings,
            platform=platform_config,
            host=host,
            keyservice_port=keyservice_port,
            gateway_port=gateway_port,
            log_level=level,
            priors=priors,
            reference_values=references,
            local_tls=tls,
        )
    )
    from rich.console import Console

    console = Console(highlight=False)
    deployment = LocalDeployment(options)
    with _log_stream(folder / "logs" / "gateway.log") as log:
        configure_logging(level, stream=log)
        with console.status("starting") as status:

            def progress(step: str) -> None:
                status.update(f"starting the {step}")

            guarded(lambda: deployment.open(progress=progress))
        info = deployment.info

        def ready() -> None:
            if ready_file is not None:
                tmp = ready_file.with_name(f".{ready_file.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n", encoding="utf-8")
                tmp.replace(ready_file)
            _print_ready(console, info.to_json())

        try:
            guarded(lambda: deployment.serve(on_ready=ready))
        finally:
            if ready_file is not None:
                ready_file.unlink(missing_ok=True)
        stats = deployment.platform.stats() if deployment.platform is not None else None
    if stats is not None:
        counters = stats.counters
        console.print(
            f"stopped: {counters.get('served', 0)} requests served, "
            f"{counters.get('cold_starts', 0)} cold starts, "
            f"{counters.get('model_loads', 0)} model loads, "
            f"{stats.gb_seconds:.1f} GB-s"
        )
    sys.stdout.flush()


def _sizes(shapes: list[dict[str, float]]) -> str:
    """``512, 1024, 2048 MB (128, 640, 1664 MB for models)``."""
    memory = ", ".join(f"{s['memory_mb']:.0f}" for s in shapes)
    budget = ", ".join(f"{s['budget_mb']:.0f}" for s in shapes)
    return f"{memory} MB ({budget} MB for models)"


def _print_ready(console: Any, info: dict[str, Any]) -> None:
    from rich.markup import escape

    rows = [
        ("gateway", info["gateway_url"]),
        ("KeyService", info["keyservice_url"]),
        ("TEE platform", f"{info['tee_socket']} ({info.get('backend', 'simulated')})"),
        ("KeyService measurement", info["keyservice_measurement"]),
        ("runtime measurement", info["runtime_measurement"]),
        ("routing policy", info["policy"]),
        ("instance sizes", _sizes(info["shapes"])),
        *([("CA bundle", info["ca_bundle"])] if info.get("ca_bundle") else []),
        ("data dir", info["data_dir"]),
        ("model store", info["store_dir"]),
        ("logs", info["logs_dir"]),
    ]
    if info.get("web_url"):
        rows.insert(1, ("web page", info["web_url"]))
    width = max(len(name) for name, _ in rows)
    console.print("[bold]sealserve is up[/bold]")
    for name, value in rows:
        console.print(f"  {name:<{width}}  {escape(str(value))}", soft_wrap=True)
    console.print("Owners grant the runtime measurement; users pin it.  Ctrl-C stops everything.")
    sys.stdout.flush()
