"""``sealserve user …``: a user's identity and request keys."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from sealserve._cli.keyservice import (
    DataDirOpt,
    IdentityOpt,
    JsonOpt,
    KeyServiceMeasurementOpt,
    KeyServiceUrlOpt,
    MeasurementOpt,
    PlatformKeyOpt,
    PolicyFileOpt,
    build_policy,
    emit,
    guarded,
    read_secret_file,
    resolve_data_dir,
    write_secret_file,
)
from sealserve._cli.owner import AllowDebugOpt, TcbOpt, connect, init_identity

__all__ = ["app"]

app = typer.Typer(help="Users (data owners): identity and request keys.", no_args_is_help=True)

ROLE = "user"


def _user(**kwargs: Any) -> Any:
    from sealserve.client import User

    return connect(User, role=ROLE, **kwargs)


@app.command()
def init(
    identity: IdentityOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False
) -> None:
    """Create the user's identity file (0600), or show the existing one."""
    init_identity(identity, data_dir, ROLE, json_out)


@app.command()
def register(
    data_dir: DataDirOpt = None,
    identity: IdentityOpt = None,
    keyservice: KeyServiceUrlOpt = None,
    keyservice_measurement: KeyServiceMeasurementOpt = None,
    platform_key: PlatformKeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register the user's public key with the (attested) KeyService."""
    user = _user(
        data_dir=data_dir,
        identity=identity,
        keyservice=keyservice,
        measurement=keyservice_measurement,
        platform_key=platform_key,
    )
    with contextlib.closing(user):
        created = guarded(user.register)
        emit(
            json_out,
            {"principal_id": user.principal_id, "role": ROLE, "created": created},
            f"user {user.principal_id} {'registered' if created else 'was already registered'}",
        )


@app.command("request-key")
def request_key(
    model_id: Annotated[str, typer.Argument(help="The model id: <owner_id>/<name>.")],
    measurement: MeasurementOpt = None,
    policy: PolicyFileOpt = None,
    allow_debug: AllowDebugOpt = False,
    tcb_status: TcbOpt = None,
    key_file: Annotated[
        Path | None,
        typer.Option(help="The request key file (32 bytes, 0600); created when absent."),
    ] = None,
    data_dir: DataDirOpt = None,
    identity: IdentityOpt = None,
    keyservice: KeyServiceUrlOpt = None,
    keyservice_measurement: KeyServiceMeasurementOpt = None,
    platform_key: PlatformKeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a request key for MODEL_ID, releasable only to runtimes that satisfy the
    policy (the key is generated into --key-file when that does not exist)."""
    from sealserve.crypto import RequestKey
    from sealserve.keyservice import split_model_id

    owner_id, name = guarded(lambda: split_model_id(model_id))
    runtime_policy = guarded(
        lambda: build_policy(measurement, policy, allow_debug=allow_debug, tcb_statuses=tcb_status)
    )
    folder = resolve_data_dir(data_dir)
    path = (
        key_file
        if key_file is not None
        else (folder / ROLE / "request-keys" / owner_id / f"{name}.key")
    )

    def load_or_create() -> RequestKey:
        if path.exists():
            return RequestKey.from_bytes(read_secret_file(path))
        key = RequestKey.generate()
        write_secret_file(path, key.to_bytes())
        return key

    user = _user(
        data_dir=data_dir,
        identity=identity,
        keyservice=keyservice,
        measurement=keyservice_measurement,
        platform_key=platform_key,
    )
    with contextlib.closing(user):
        key = guarded(load_or_create)
        receipt = guarded(lambda: user.put_request_key(model_id, key, runtime_policy))
        emit(
            json_out,
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
