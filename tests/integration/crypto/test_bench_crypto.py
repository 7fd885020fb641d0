"""``sealserve bench crypto`` on a tiny configuration: the document it writes, not its times.

(It is here rather than in tests/unit because the benchmark records the machine it ran on.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sealserve.bench.crypto import KIB, MIB, CryptoBenchConfig, run_crypto_bench

TINY = CryptoBenchConfig(message_sizes=(1 * KIB, 600 * KIB), model_size=1 * MIB, repeats=2)


def test_document_has_the_figures_and_the_top_level_ratios(tmp_path: Path) -> None:
    seen: list[str] = []
    doc = run_crypto_bench(TINY, workdir=tmp_path, progress=seen.append)
    cases = {r["case"] for r in doc["results"]}
    for size in TINY.message_sizes:
        assert {
            f"raw_encrypt@{size}",
            f"seal@{size}",
            f"raw_decrypt@{size}",
            f"unseal@{size}",
        } <= cases
    assert {
        "raw_decrypt_model",
        "unseal_model_stream",
        "unseal_model_memory",
        "seal_model",
    } <= cases
    for result in doc["results"]:
        assert len(result["samples_s"]) == TINY.repeats
        assert result["median_s"] > 0
    assert set(doc["framing_ratios"]) == {
        f"{op}@{size}" for op in ("seal", "unseal") for size in TINY.message_sizes
    }
    assert doc["framing_overhead"] == max(
        doc["framing_ratios"][f"{op}@{600 * KIB}"] for op in ("seal", "unseal")
    )
    assert math.isfinite(doc["model_unseal_ratio"])
    assert doc["goals"]["framing_overhead_max"] == 1.10
    assert doc["goals"]["model_unseal_ratio_min"] == 0.5
    assert len(seen) == TINY.repeats * len(cases)
    json.dumps(doc)  # JSON-ready
