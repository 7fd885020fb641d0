"""Fixtures of the attest integration tests: a platform on a private copy of the package
(``frozen_package``, from tests/conftest.py) and a short directory for sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attest.tee import SimulatedPlatform


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
