"""Fixtures of the attest integration tests: a private copy of the package and a platform."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attest import SimulatedPlatform, _measure


@pytest.fixture
def frozen_package(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A private copy of the installed package, made the "installed" one for this test, so
    that engineers editing the checkout meanwhile cannot change a measurement mid-test."""
    copy = tmp_path_factory.mktemp("frozen") / "sealserve"
    shutil.copytree(
        _measure.installed_package_dir(), copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(_measure, "installed_package_dir", lambda: copy)
    return copy


@pytest.fixture
def platform(tmp_path: Path, frozen_package: Path) -> Iterator[SimulatedPlatform]:
    with SimulatedPlatform(data_dir=tmp_path / "data", package_dir=frozen_package) as p:
        yield p


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ss-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
