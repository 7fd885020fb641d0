"""Concurrent grants, revokes and releases from several clients: no release after a revoke."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sealserve.attest import Policy
from sealserve.client import Owner, User
from sealserve.crypto import Identity, RequestKey, SymmetricKey
from sealserve.errors import AccessDenied
from tests.integration.keyservice.conftest import KeyServiceProcess
from tests.integration.keyservice.simruntime import SimulatedRuntime, probe_measurement

USERS = 6
REVOKED = 4  # users 0..3 are revoked while runtimes release
RUNTIMES = 3
RELEASES_PER_RUNTIME = 24


def test_no_release_after_a_committed_revoke(ks: KeyServiceProcess) -> None:
    probe = Policy(measurements=frozenset({probe_measurement(ks.platform)}))
    owner = Owner(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    second_owner = Owner(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    users = [User(Identity.generate(), keyservice_url=ks.url, pin=ks.pin()) for _ in range(USERS)]
    with owner, second_owner:
        owner.register()
        second_owner.register()
        mid = owner.model_id("shared")
        owner.put_model_key("shared", SymmetricKey.generate())
        second_owner.put_model_key("other", SymmetricKey.generate())
        for user in users:
            with user:
                user.register()
                user.put_request_key(mid, RequestKey.generate(), probe)
            owner.grant("shared", user.principal_id, probe)

        revoked_at: dict[int, float] = {}
        outcomes: list[tuple[int, float, bool]] = []
        lock = threading.Lock()
        start = threading.Barrier(RUNTIMES + 2)

        def run_runtime(index: int) -> None:
            runtime = SimulatedRuntime(ks)
            try:
                start.wait()
                for n in range(RELEASES_PER_RUNTIME):
                    u = (index + n) % USERS
                    began = time.monotonic()
                    try:
                        runtime.release([(users[u].principal_id, mid)])
                        ok = True
                    except AccessDenied:
                        ok = False
                    with lock:
                        outcomes.append((u, began, ok))
            finally:
                runtime.close()

        def revoke_some() -> None:
            start.wait()
            for u in range(REVOKED):
                time.sleep(0.05)  # let releases interleave; the check below is on order only
                owner.revoke("shared", users[u].principal_id)
                with lock:
                    revoked_at[u] = time.monotonic()

        def grant_elsewhere() -> None:
            start.wait()
            for user in users:
                second_owner.grant("other", user.principal_id, probe)

        with ThreadPoolExecutor(max_workers=RUNTIMES + 2) as pool:
            futures = [pool.submit(run_runtime, i) for i in range(RUNTIMES)]
            futures += [pool.submit(revoke_some), pool.submit(grant_elsewhere)]
            for future in futures:
                future.result(timeout=300)

        late = [(u, t) for u, t, ok in outcomes if ok and u in revoked_at and t > revoked_at[u]]
        assert late == [], "a release that began after a committed revoke got the keys"
        assert len(outcomes) == RUNTIMES * RELEASES_PER_RUNTIME
        # the never-revoked users were released to throughout, the revoked ones no longer are
        assert any(ok for u, _, ok in outcomes if u >= REVOKED)
        assert len(second_owner.model("other").grants) == USERS
        runtime = SimulatedRuntime(ks)
        try:
            for u in range(REVOKED):
                with pytest.raises(AccessDenied):
                    runtime.release([(users[u].principal_id, mid)])
        finally:
            runtime.close()
