"""``sealserve bench keyservice`` runs a release of every evidence kind (a smoke test of the
benchmark, not a measurement: nothing here depends on a time)."""

from __future__ import annotations

import math

from sealserve.bench.keyservice import KeyServiceBenchConfig, run_keyservice_bench


def test_the_benchmark_releases_with_every_kind_of_evidence() -> None:
    config = KeyServiceBenchConfig(
        concurrency=2,
        requests_per_round=6,
        rounds=1,
        warmup=4,
        unloaded=0,
        step_count=0,
        verify_count=3,
    )
    result = run_keyservice_bench(config)
    kinds = result["kinds"]
    # Every phase answered 200 and opened every release (the benchmark raises otherwise).
    assert set(kinds) == {"simulated", "sev-snp", "tpm-quote", "azure-snp-vtpm"}
    for figures in kinds.values():
        assert figures["releases_per_s"] > 0
        assert math.isfinite(figures["verify_us"])
        assert figures["verify_us"] > 0
    assert kinds["simulated"]["releases_per_s_ratio"] == 1.0
    assert result["releases_per_s"] == kinds["simulated"]["releases_per_s"]
