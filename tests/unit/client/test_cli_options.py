"""The owner's and user's commands share one definition of their connection options."""

from __future__ import annotations

import pytest
import typer

from sealserve._cli import owner, user

SHARED = {
    "--data-dir",
    "--identity",
    "--keyservice",
    "--keyservice-measurement",
    "--platform-key",
    "--json",
}


#: The commands that talk to the KeyService.
CONNECTING = {
    "owner": ["register", "put-key", "grant", "revoke", "show", "audit", "upload"],
    "user": ["register", "request-key", "infer"],
}


@pytest.mark.parametrize(("role", "group"), [("owner", owner.app), ("user", user.app)])
def test_every_connecting_command_has_the_shared_options_once(
    role: str, group: typer.Typer
) -> None:
    command = typer.main.get_command(group)
    commands = command.commands  # type: ignore[attr-defined]  # a group's
    for name in CONNECTING[role]:
        options = [o for p in commands[name].params for o in getattr(p, "opts", [])]
        assert set(options) >= SHARED, name
        assert len(options) == len(set(options)), name  # none declared twice
