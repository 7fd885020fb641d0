"""Fixtures for every integration test area: a private software TPM (``swtpm``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.swtpm import Swtpm, swtpm_missing


@pytest.fixture(scope="module")
def swtpm() -> Iterator[Swtpm]:
    """A manufactured swtpm (EK certificate from its local CA) on a private socket, stopped
    and removed after the module; skipped with the reason when swtpm or tpm2-tools is absent
    (scripts/ci-deps installs them)."""
    missing = swtpm_missing()
    if missing is not None:
        pytest.skip(f"{missing} is not installed (scripts/ci-deps installs swtpm and tpm2-tools)")
    with Swtpm() as tpm:
        yield tpm
