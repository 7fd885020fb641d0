"""Schemathesis, bounded, against the live OpenAPI document: no 5xx, the service stays up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from sealserve.attest.tee import SimulatedPlatform
from sealserve.config import KeyServiceSettings
from tests.integration.keyservice.conftest import KeyServiceProcess

EXAMPLES_PER_OPERATION = 20


@pytest.fixture
def roomy_ks(platform: SimulatedPlatform, tmp_path: Path) -> Iterator[KeyServiceProcess]:
    """A KeyService on SQLite whose budgets do not turn the fuzzing into 429s."""
    service = KeyServiceProcess(
        platform,
        data_dir=tmp_path,
        db_url=f"sqlite+pysqlite:///{tmp_path / 'ks.db'}",
        settings=KeyServiceSettings(
            rate_limit_per_s=10_000.0,
            rate_limit_burst=10_000,
            signed_requests_per_window=100_000,
            registrations_per_s=10_000.0,
            registration_burst=10_000,
            revocations_per_s=10_000.0,
            revocation_burst=10_000,
        ),
    ).start()
    try:
        yield service
    finally:
        assert service.stop() == 0


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(roomy_ks: KeyServiceProcess, mode: GenerationMode) -> None:
    doc = httpx.get(roomy_ks.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=roomy_ks.url, timeout=10)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")

        try:
            check()
        except Unsatisfiable:
            # nothing to make invalid (no parameters, no body): covered by the positive run
            assert mode is GenerationMode.NEGATIVE
    assert failures == []
    assert httpx.get(roomy_ks.url + "/healthz", timeout=10).status_code == 200
