"""The options every owner and user command shares, defined once.

A command written as ``def put_key(name: ..., *, conn: Connection) -> None`` and registered
with :func:`principal_command` gets its own options plus ``--data-dir``, ``--identity``,
``--keyservice``, ``--keyservice-measurement``, ``--platform-key`` and ``--json``, handed to it
as one :class:`Connection` (Typer has no dependency injection: the command's signature is
extended here, once, instead of in every command).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from sealserve._cli._principal import connect
from sealserve._cli.keyservice import (
    DataDirOpt,
    IdentityOpt,
    JsonOpt,
    KeyServiceMeasurementOpt,
    KeyServiceUrlOpt,
    PlatformKeyOpt,
    resolve_data_dir,
)

__all__ = ["Connection", "principal_command"]

_F = TypeVar("_F", bound=Callable[..., None])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Connection:
    """Where a principal's files are and which (attested) KeyService it talks to."""

    data_dir: Path | None = None
    identity: Path | None = None
    keyservice: str | None = None
    keyservice_measurement: str | None = None
    platform_key: Path | None = None
    json_out: bool = False

    @property
    def folder(self) -> Path:
        """The data directory (the option, else ``$SEALSERVE_DATA_DIR``, else XDG)."""
        return resolve_data_dir(self.data_dir)

    def open(self, cls: type[Any], role: str) -> Any:
        """An opened ``Owner`` or ``User`` (attested connection); the caller closes it."""
        return connect(
            cls,
            data_dir=self.data_dir,
            identity=self.identity,
            keyservice=self.keyservice,
            measurement=self.keyservice_measurement,
            platform_key=self.platform_key,
            role=role,
        )


#: The shared options, as keyword-only parameters of every principal command.
_SHARED: tuple[inspect.Parameter, ...] = tuple(
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
    for name, hint, default in (
        ("data_dir", DataDirOpt, None),
        ("identity", IdentityOpt, None),
        ("keyservice", KeyServiceUrlOpt, None),
        ("keyservice_measurement", KeyServiceMeasurementOpt, None),
        ("platform_key", PlatformKeyOpt, None),
        ("json_out", JsonOpt, False),
    )
)


def principal_command(app: typer.Typer, name: str | None = None) -> Callable[[_F], _F]:
    """Register ``fn(..., *, conn: Connection)`` as command ``name`` of ``app``, with the
    shared options after its own (see the module docstring)."""

    def register(fn: _F) -> _F:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name])
            for p in inspect.signature(fn).parameters.values()
            if p.name != "conn"
        ]
        shared_names = [p.name for p in _SHARED]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> None:
            shared = {n: kwargs.pop(n) for n in shared_names if n in kwargs}
            fn(*args, conn=Connection(**shared), **kwargs)

        parameters = [*own, *_SHARED]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        app.command(name)(command)
        return fn

    return register
