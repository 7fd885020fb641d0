"""What the ``owner`` and ``user`` command groups share: the identity file, the attested
connection to the KeyService, registration, key files and the default runtime policy."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from sealserve._cli.keyservice import (
    build_pin,
    build_policy,
    emit,
    guarded,
    keyservice_url,
    read_secret_file,
    resolve_ca_bundle,
    resolve_data_dir,
    write_secret_file,
)

if TYPE_CHECKING:
    from sealserve.crypto import RequestKey, SymmetricKey

__all__ = [
    "AllowDebugOpt",
    "TcbOpt",
    "connect",
    "identity_path",
    "init_identity",
    "load_identity",
    "load_or_create_key",
    "register_principal",
    "runtime_policy_or_default",
]

AllowDebugOpt = Annotated[
    bool, typer.Option("--allow-debug", help="Admit debug runtimes (never in production).")
]
TcbOpt = Annotated[
    list[str] | None,
    typer.Option("--tcb-status", help="An acceptable TCB status (default: UpToDate); repeat."),
]
KeyT = TypeVar("KeyT", "SymmetricKey", "RequestKey")


def identity_path(data_dir: Path, identity: Path | None, role: str) -> Path:
    return identity if identity is not None else data_dir / role / "identity.pem"


def load_identity(data_dir: Path, identity: Path | None, role: str) -> Any:
    """The ``role``'s identity; a missing file says which command creates it."""
    from sealserve.crypto import Identity
    from sealserve.errors import IdentityError

    path = identity_path(data_dir, identity, role)
    if not path.exists():
        where = f" --identity '{path}'" if identity is not None else f" --data-dir '{data_dir}'"
        raise IdentityError(
            f"No {role} identity at '{path}'. Create it first: sealserve {role} init{where}"
        )
    return Identity.load(path)


def init_identity(identity: Path | None, data_dir: Path | None, role: str, as_json: bool) -> None:
    from sealserve.crypto import Identity

    path = identity_path(resolve_data_dir(data_dir), identity, role)

    def create() -> Identity:
        if path.exists():
            return Identity.load(path)
        new = Identity.generate()
        new.save(path)
        return new

    ident = guarded(create)
    emit(
        as_json,
        {"principal_id": ident.principal_id, "identity": str(path), "role": role},
        f"{role} {ident.principal_id}\nidentity file {path}",
    )


def connect(
    cls: Any,
    *,
    data_dir: Path | None,
    identity: Path | None,
    keyservice: str | None,
    measurement: str | None,
    platform_key: Path | None,
    role: str,
    ca_bundle: Path | None = None,
) -> Any:
    """An opened Owner or User (attested connection); the caller closes it.  An
    ``https://`` KeyService is verified against :func:`resolve_ca_bundle`'s bundle."""
    folder = resolve_data_dir(data_dir)

    def open_principal() -> Any:
        ident = load_identity(folder, identity, role)
        pin = build_pin(folder, measurement, platform_key)
        return cls(
            ident,
            keyservice_url=keyservice_url(keyservice),
            pin=pin,
            ca_bundle=resolve_ca_bundle(ca_bundle, folder),
        ).open()

    return guarded(open_principal)


def register_principal(principal: Any, role: str, as_json: bool) -> None:
    """Register an opened Owner or User with the KeyService, print the outcome and close it."""
    with contextlib.closing(principal):
        created = guarded(principal.register)
        emit(
            as_json,
            {"principal_id": principal.principal_id, "role": role, "created": created},
            f"{role} {principal.principal_id} "
            f"{'registered' if created else 'was already registered'}",
        )


def load_or_create_key(path: Path, cls: type[KeyT]) -> KeyT:
    """The key of class ``cls`` in the secret file at ``path``; a new one saved there when
    the file does not exist."""
    if path.exists():
        return cls.from_bytes(read_secret_file(path))
    key = cls.generate()
    write_secret_file(path, key.to_bytes())
    return key


def runtime_policy_or_default(
    data_dir: Path,
    measurements: list[str] | None,
    policy_file: Path | None,
    allow_debug: bool,
    tcb_statuses: list[str] | None,
    reference_values: list[Path] | None = None,
) -> Any:
    """The runtime policy of a grant: the one given, else the installed code's runtime."""
    if not measurements and not reference_values and policy_file is None:
        from sealserve._cli.up import default_runtime_measurement

        measurements = [default_runtime_measurement(data_dir)]
    return build_policy(
        measurements,
        policy_file,
        allow_debug=allow_debug,
        tcb_statuses=tcb_statuses,
        reference_values=reference_values,
    )
