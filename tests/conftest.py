"""Shared fixtures: where the test vectors are, and a PostgreSQL URL when CI provides one."""

from __future__ import annotations

import os
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
