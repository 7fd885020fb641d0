"""Fixtures of the attest unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def frozen_package(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A private copy of the installed package, made the "installed" one for this test, so
    that engineers editing the checkout meanwhile cannot change a measurement mid-test."""
    from sealserve.attest import _measure

    source = _measure.installed_package_dir()
    copy = tmp_path_factory.mktemp("frozen") / "sealserve"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_measure, "installed_package_dir", lambda: copy)
    return copy
