"""``sealserve user …``: a user's identity and request keys."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from sealserve._cli._connection import Connection, principal_command
from sealserve._cli._principal import (
    AllowDebugOpt,
    TcbOpt,
    init_identity,
    load_identity,
    load_or_create_key,
    register_principal,
    runtime_policy_or_default,
)
from sealserve._cli.keyservice import (
    CaBundleOpt,
    DataDirOpt,
    IdentityOpt,
    JsonOpt,
    MeasurementOpt,
    PolicyFileOpt,
    ReferenceValuesOpt,
    build_policy,
    check_policy_flags,
    emit,
    fail,
    guarded,
    read_secret_file,
    resolve_ca_bundle,
    resolve_data_dir,
    write_secret_file,
)

__all__ = ["app"]

app = typer.Typer(
    help="Users (data owners): identity, request keys and sealed inference.",
    no_args_is_help=True,
)

ROLE = "user"


def _user(conn: Connection) -> Any:
    from sealserve.client import User

    return conn.open(User, ROLE)


@app.command()
def init(
    identity: IdentityOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False
) -> None:
    """Create the user's identity file (0600), or show the existing one."""
    init_identity(identity, data_dir, ROLE, json_out)


@principal_command(app)
def register(
    *,
    conn: Connection,
) -> None:
    """Register the user's public key with the (attested) KeyService."""
    user = _user(conn)
    register_principal(user, ROLE, conn.json_out)


@principal_command(app, "request-key")
def request_key(
    model_id: Annotated[str, typer.Argument(help="The model id: <owner_id>/<name>.")],
    measurement: MeasurementOpt = None,
    reference_values: ReferenceValuesOpt = None,
    policy: PolicyFileOpt = None,
    allow_debug: AllowDebugOpt = False,
    tcb_status: TcbOpt = None,
    key_file: Annotated[
        Path | None,
        typer.Option(help="The request key file (32 bytes, 0600); created when absent."),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Register a request key for MODEL_ID, releasable only to runtimes that satisfy the
    policy (the key is generated into --key-file when that does not exist)."""
    from sealserve.crypto import RequestKey
    from sealserve.protocol import split_model_id

    owner_id, name = guarded(lambda: split_model_id(model_id))
    runtime_policy = guarded(
        lambda: build_policy(
            measurement,
            policy,
            allow_debug=allow_debug,
            tcb_statuses=tcb_status,
            reference_values=reference_values,
        )
    )
    folder = conn.folder
    path = (
        key_file
        if key_file is not None
        else (folder / ROLE / "request-keys" / owner_id / f"{name}.key")
    )

    user = _user(conn)
    with contextlib.closing(user):
        key = guarded(lambda: load_or_create_key(path, RequestKey))
        receipt = guarded(lambda: user.put_request_key(model_id, key, runtime_policy))
        emit(
            conn.json_out,
            {
                "model_id": receipt.model_id,
                "user_id": receipt.user_id,
                "version": receipt.version,
                "revocation_epoch": receipt.revocation_epoch,
                "key_file": str(path),
                "key_fingerprint": key.fingerprint,
            },
            f"request key version {receipt.version} for {receipt.model_id} stored "
            f"(key file {path}, fingerprint {key.fingerprint})",
        )


@principal_command(app)
def infer(
    model_id: Annotated[str, typer.Argument(help="The model id: <owner_id>/<name>.")],
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            help="A tensor file (.npz, .npy, .sstn), an image (.jpg, .png, ...) or text "
            "(.txt, one sentence a line) for models the zoo knows.",
            dir_okay=False,
        ),
    ],
    as_model: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="The zoo model it is, for pre- and post-processing (default: its name).",
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            help="Gateway URL (default: the one 'sealserve up' on the data dir announced, "
            "else the settings').",
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="The request key file (default: <data-dir>/user/request-keys/OWNER/NAME.key; "
            "created and registered when absent)."
        ),
    ] = None,
    measurement: MeasurementOpt = None,
    reference_values: ReferenceValuesOpt = None,
    policy: PolicyFileOpt = None,
    allow_debug: AllowDebugOpt = False,
    tcb_status: TcbOpt = None,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Deadline, seconds.")] = 60.0,
    retries: Annotated[
        int, typer.Option(min=0, help="Send again this many times on retryable failures.")
    ] = 2,
    output: Annotated[
        Path | None, typer.Option(help="Also save the output tensors here (.npz).")
    ] = None,
    ca_bundle: CaBundleOpt = None,
    *,
    conn: Connection,
) -> None:
    """Run MODEL_ID on an input, encrypted end to end: seal it here, send it through the
    gateway, unseal the answer here and print it.

    Without a request key for the model, one is generated and registered first, releasable
    to runtimes that satisfy --measurement / --policy (default: the installed code's runtime).
    """
    import json

    from sealserve._cli.gateway import gateway_url
    from sealserve.client import GatewayClient
    from sealserve.crypto import RequestKey
    from sealserve.models import load_inputs, save_outputs, summarize_outputs, zoo_spec_for
    from sealserve.protocol import split_model_id

    check_policy_flags(
        measurement,
        policy,
        allow_debug=allow_debug,
        tcb_statuses=tcb_status,
        reference_values=reference_values,
    )
    owner_id, name = guarded(lambda: split_model_id(model_id))
    if not input_file.is_file():
        fail(f"no input file at '{input_file}'", 2)
    spec = zoo_spec_for(as_model or name)
    if as_model is not None and spec is None:
        fail(f"--as {as_model!r} is not a model of the zoo (see 'sealserve models list')", 2)
    folder = conn.folder
    ident = guarded(lambda: load_identity(folder, conn.identity, ROLE))
    path = key_file or folder / ROLE / "request-keys" / owner_id / f"{name}.key"
    inputs = guarded(lambda: load_inputs(input_file, spec=spec))
    registered = False
    if path.exists():
        key = guarded(lambda: RequestKey.from_bytes(read_secret_file(path)))
    else:
        runtime_policy = guarded(
            lambda: runtime_policy_or_default(
                folder, measurement, policy, allow_debug, tcb_status, reference_values
            )
        )
        key = RequestKey.generate()
        user = _user(conn)
        with contextlib.closing(user):
            guarded(lambda: user.put_request_key(model_id, key, runtime_policy))
        guarded(lambda: write_secret_file(path, key.to_bytes()))
        registered = True

    def run() -> Any:
        with GatewayClient(
            gateway_url(gateway, folder),
            timeout_s=timeout_s,
            ca_bundle=resolve_ca_bundle(ca_bundle, folder),
        ) as client:
            return client.infer(
                model_id,
                inputs,
                user_id=ident.principal_id,
                key=key,
                timeout_s=timeout_s,
                retries=retries,
            )

    result = guarded(run)
    texts = None
    if input_file.suffix.lower() == ".txt":
        texts = [t.strip() for t in input_file.read_text().splitlines() if t.strip()]
    summary = guarded(lambda: summarize_outputs(result.outputs, inputs, spec=spec, texts=texts))
    if output is not None:
        guarded(lambda: save_outputs(output, result.outputs))
    route = result.route.describe() if result.route is not None else "unknown"
    stages = {k: round(v, 3) for k, v in result.timings.items()}
    if conn.json_out:
        doc = {
            "model_id": model_id,
            "request_id": result.request_id,
            "result": summary.data,
            "timings_ms": stages,
            "route": route,
            "instance_id": result.instance_id,
            "attempts": result.attempts,
            "registered_request_key": registered,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    lines = []
    if registered:
        lines.append(f"registered a request key for {model_id} (saved to {path})")
    lines.append(f"{model_id} ({spec.description if spec else 'tensors'}):")
    lines += list(summary.lines)
    shown = ("queue", "cold_start", "model_load", "inference", "runtime", "gateway")
    lines.append("timings: " + ", ".join(f"{k} {stages[k]:.1f} ms" for k in shown if k in stages))
    lines.append(f"route: {route}")
    if output is not None:
        lines.append(f"outputs saved to {output}")
    typer.echo("\n".join(lines))


@app.command("web-credentials")
def web_credentials_command(
    model_id: Annotated[str, typer.Argument(help="The model id: <owner_id>/<name>.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write them (0600; default: <data-dir>/user/web/OWNER/NAME.json)."
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="The request key file (default: <data-dir>/user/request-keys/OWNER/NAME.key)."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    identity: IdentityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the browser client's credentials for MODEL_ID: the user id and the request key
    (a secret: the page at <gateway>/web/ reads the file; docs/web.md). The key must be
    registered already (sealserve user request-key) and the model granted to this user."""
    from sealserve.client import web_credentials
    from sealserve.crypto import RequestKey
    from sealserve.protocol import split_model_id

    owner_id, name = guarded(lambda: split_model_id(model_id))
    folder = resolve_data_dir(data_dir)
    user = guarded(lambda: load_identity(folder, identity, ROLE))
    source = key_file or folder / ROLE / "request-keys" / owner_id / f"{name}.key"
    if not source.exists():
        fail(
            f"no request key at '{source}'. Register one first: "
            f"sealserve user request-key {model_id}"
        )
    key = guarded(lambda: RequestKey.from_bytes(read_secret_file(source)))
    target = out or folder / ROLE / "web" / owner_id / f"{name}.json"
    document = guarded(
        lambda: web_credentials(user_id=user.principal_id, model_id=model_id, request_key=key)
    )
    if target.exists():
        fail(f"'{target}' exists; remove it or pass --out")
    guarded(lambda: write_secret_file(target, document))
    emit(
        json_out,
        {"path": str(target), "user_id": user.principal_id, "model_id": model_id},
        f"web credentials for {model_id} written to {target} (mode 0600: it holds your "
        "request key)",
    )
