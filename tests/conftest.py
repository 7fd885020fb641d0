"""Shared fixtures: where the test vectors are, a PostgreSQL URL when CI provides one, and a
private copy of the package to measure."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTVECTORS = REPO_ROOT.parent / "shared" / "testvectors"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def testvectors_dir() -> Path:
    """The shared DCAP test vectors; tests that need them skip when the folder is absent."""
    override = os.environ.get("SEALSERVE_TESTVECTORS")
    folder = Path(override) if override else TESTVECTORS
    if not (folder / "dcap").is_dir():
        pytest.skip(f"test vectors not found at {folder} (set SEALSERVE_TESTVECTORS)")
    return folder


@pytest.fixture
def frozen_package(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A private copy of the installed package, made the "installed" one for this test, so
    that engineers editing the checkout meanwhile cannot change a measurement mid-test."""
    from sealserve.attest import _measure

    copy = tmp_path_factory.mktemp("frozen") / "sealserve"
    shutil.copytree(
        _measure.installed_package_dir(), copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(_measure, "installed_package_dir", lambda: copy)
    return copy


@pytest.fixture(params=["c", "python"])
def ipc_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on each core of the ipc hot path: the compiled one and pure Python.

    Child processes the test starts inherit the choice (``SEALSERVE_IPC_CORE``).  Whether the
    compiled core is built at all is ``tests/unit/ipc/test_core.py``'s business.
    """
    from sealserve.ipc import _core

    core = request.param
    if core not in _core.available():
        pytest.skip("the compiled ipc core is not built here")
    before = _core.active()
    _core.use(core)
    monkeypatch.setenv("SEALSERVE_IPC_CORE", core)
    try:
        yield core
    finally:
        _core.use(before)
