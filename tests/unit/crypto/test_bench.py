"""``sealserve bench crypto``: configuration and command-line checks (the run is integration)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sealserve.bench.crypto import CryptoBenchConfig
from sealserve.cli import app


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="repeats"):
        CryptoBenchConfig(repeats=0)
    with pytest.raises(ValueError, match="model_size"):
        CryptoBenchConfig(model_size=10)
    assert CryptoBenchConfig.quick().repeats == 3


def test_command_rejects_bad_repeats() -> None:
    result = CliRunner().invoke(app, ["bench", "crypto", "--repeats", "0"])
    assert result.exit_code == 2
    assert "--repeats must be >= 1" in result.stderr
