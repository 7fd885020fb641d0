"""Shared fixtures of the packer's unit tests: a small cost model and group configuration."""

from __future__ import annotations

import pytest

from sealserve.packer import CostModel, GroupConfig, ModelCosts


def make_costs() -> CostModel:
    return CostModel(
        cold_start_s=1.0,
        runtime_base_mb=100.0,
        models={
            "small": ModelCosts(load_s=0.1, infer_s=0.01, memory_mb=100.0, file_mb=20.0),
            "medium": ModelCosts(load_s=0.4, infer_s=0.05, memory_mb=300.0),
            "large": ModelCosts(load_s=2.0, infer_s=0.2, memory_mb=700.0),
        },
        source="test",
        methods={"load_ms": "made up for tests"},
    )


@pytest.fixture
def costs() -> CostModel:
    return make_costs()


@pytest.fixture
def config() -> GroupConfig:
    return GroupConfig(budget_mb=1000.0, runtime_base_mb=100.0, concurrency=2, max_instances=3)
