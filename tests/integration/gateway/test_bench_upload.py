"""``sealserve bench upload`` runs: every case uploads or fetches the same bytes (each checks
the digest the store reports) and the figures are there, with the copy as their baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealserve.bench.upload import run_upload_bench

pytestmark = pytest.mark.integration


def test_the_upload_benchmark_measures_every_path_against_the_copy(tmp_path: Path) -> None:
    doc = run_upload_bench(size_mb=2.0, repeats=1, work_dir=tmp_path)
    cases = doc["cases"]
    assert set(cases) == {
        "copy (same disk, fsync)",
        "seal (into the spool, hashing)",
        "upload, HTTP, directory store",
        "upload, HTTPS, directory store",
        "upload, HTTP, object store (fsspec)",
        "fetch, directory store",
        "fetch, object store (fsspec)",
    }
    assert doc["sealed_bytes"] > doc["plain_bytes"] == 2_000_000
    assert cases["copy (same disk, fsync)"]["speed_vs_copy"] == 1.0
    for figures in cases.values():
        assert figures["mb_per_s"] > 0
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
