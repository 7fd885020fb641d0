"""The fault matrix's short form (``sealserve bench faults`` runs all of it): a steady mixed
load through the gateway (three users, three models of three sizes) while a runtime, an
instance host, one of two KeyService replicas and the gateway itself are killed in turn.

For each fault: no request is lost (every one is answered, and every answer unseals to plain
onnxruntime's output), the load recovers, and once it stops and the instances scale to zero
nothing is left behind: no process of the stack, no shared-memory segment, no descriptor held
by the gateway, the KeyService replicas or this process.  The KeyService replicas share a
SQLite file here (the benchmark uses PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sealserve.bench.faults import FaultsConfig, run_faults

pytestmark = pytest.mark.integration

SHORT = ("runtime-sigkill", "host-sigkill", "gateway-sigkill", "keyservice-replica-kill")


@pytest.mark.timeout(600)
def test_no_request_is_lost_and_nothing_leaks_under_faults(tmp_path: Path) -> None:
    config = FaultsConfig(
        only=SHORT,
        own_postgres=False,
        store_tmpfs=False,
        concurrency=4,
        settle_s=1.0,
        observe_s=6.0,
    )
    data = run_faults(config, root=tmp_path)
    assert data["database"] == "sqlite"
    assert [r["fault"] for r in data["faults"]] == list(SHORT)
    for r in data["faults"]:
        assert r["error"] == "", r
        assert r["lost"] == 0, r
        assert r["ok"] > 0, r
        assert r["recovery_s"] is not None, r
        assert r["scaled_to_zero"], r
        leaked = r["leaked"]
        assert (leaked["processes"], leaked["shm"], leaked["fds"]) == (0, 0, 0), r
    killed = {r["fault"]: r for r in data["faults"]}
    # The host's and the gateway's deaths were felt (requests were sent again) and survived.
    assert killed["host-sigkill"]["retried"] + killed["gateway-sigkill"]["retried"] > 0
