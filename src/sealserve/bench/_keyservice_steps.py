"""Where a key release's CPU goes: each step of one round trip, timed in this process.

The real classes, without HTTP: a :class:`~sealserve.keyservice.KeyService` over a SQLite
file, the simulated platform's evidence, a :class:`~sealserve.keyservice.ReleaseSession`.  Each
step runs ``count`` times in a row and is timed in CPU time of this thread (so waiting, such as
an fsync, does not count); the figures are microseconds per release.  The benchmark subtracts
the server's steps from the CPU its processes spent per release over HTTP, which leaves what
HTTP, the event loop and the thread hops cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CLIENT_STEPS", "SERVER_STEPS", "measure_steps"]

#: Server steps, in the order a release takes them.
SERVER_STEPS = (
    "parse_request",
    "check_challenge",
    "verify_evidence",
    "read_records",
    "decide_wrap_sign",
    "encode_response",
    "commit_audit_and_nonce",
    "issue_challenge",
)
#: Client (runtime) steps, in the order a release takes them.
CLIENT_STEPS = ("parse_challenge", "obtain_evidence", "build_request", "open_release")

_T = TypeVar("_T")
#: Releases committed together when the group commit is busy (the benchmark's concurrency).
_BATCH = 8


def measure_steps(root: Path, *, count: int = 300) -> dict[str, dict[str, float]]:
    """``{"server": {step: us}, "client": {step: us}}`` per release, measured in ``root``, and
    ``{"poll": {"answer_poll": us}}``: the server's CPU per revocation poll, in process."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    root.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_measure(root, count))


async def _measure(root: Path, count: int) -> dict[str, dict[str, float]]:
    from sealserve.attest import Policy
    from sealserve.attest.tee import SimulatedPlatform
    from sealserve.config import KeyServiceSettings
    from sealserve.crypto import Identity, SymmetricKey, wrap
    from sealserve.keyservice import EvidenceVerifier, KeyService, Store, Vault
    from sealserve.keyservice._records import Claim, PrincipalRow
    from sealserve.protocol import (
        AttestedKeyService,
        ReleaseSession,
        RevocationPoll,
        join_model_id,
        parse_challenge,
        wire,
    )

    with (
        SimulatedPlatform(data_dir=root / "platform") as platform,
        Store(f"sqlite+pysqlite:///{root / 'steps.db'}") as store,
    ):
        service = KeyService(
            store=store,
            vault=Vault(SymmetricKey.generate()),
            evidence_source=lambda rd: platform.issue_unlaunched_evidence(
                "keyservice", rd
            ).to_bytes(),
            verifier=EvidenceVerifier(trust=platform.trust_anchors()),
            # Polls of one runtime key, as fast as they come: no budget in the way.
            settings=KeyServiceSettings(runtime_polls_per_s=1e9, runtime_poll_burst=10**9),
        )
        owner, user = Identity.generate(), Identity.generate()
        o = PrincipalRow(owner.principal_id, owner.public_key_bytes, "owner")
        u = PrincipalRow(user.principal_id, user.public_key_bytes, "user")
        store.add_principal(o.principal_id, o.public_key, "owner", at=time.time())
        store.add_principal(u.principal_id, u.public_key, "user", at=time.time())
        policy = Policy(measurements=frozenset({platform.measurement("attest-probe")})).to_dict()
        mid = join_model_id(owner.principal_id, "m")
        ks_key = service.hpke_public_key

        def wrapped(kind: str, who: str, version: int | None) -> bytes:
            info = wire.upload_info(
                kind, model_id=mid, principal_id=who, version=version, keyservice_key=ks_key
            )
            return wrap(ks_key, SymmetricKey.generate().to_bytes(), info=info)

        await service.put_model_key(
            o,
            owner_id=o.principal_id,
            name="m",
            version=1,
            wrapped=wrapped("model-key", o.principal_id, 1),
        )
        await service.grant(
            o, owner_id=o.principal_id, name="m", user_id=u.principal_id, policy=policy
        )
        await service.put_request_key(
            u,
            owner_id=o.principal_id,
            name="m",
            user_id=u.principal_id,
            wrapped=wrapped("request-key", u.principal_id, None),
            policy=policy,
        )
        session = ReleaseSession(
            keyservice=AttestedKeyService(
                keyservice_id=service.keyservice_id,
                hpke_public_key=ks_key,
                hpke_suite=service.hpke_suite,
                signing_public_key=service.signing_public_key,
                measurement="",
            )
        )
        pairs = [(u.principal_id, mid)]
        releaser = service.releaser
        server: dict[str, float] = {}
        client: dict[str, float] = {}

        challenges = _timed(server, "issue_challenge", count, service.challenge)
        answers = [
            wire.canonical_json(
                {
                    "nonce": wire.b64encode(c.nonce),
                    "expires_at": c.expires_at,
                    "ttl_s": service.settings.challenge_ttl_s,
                }
            )
            for c in challenges
        ]
        nonces = _timed_each(client, "parse_challenge", answers, parse_challenge)
        evidence = _timed_each(
            client,
            "obtain_evidence",
            nonces,
            lambda n: platform.issue_unlaunched_evidence("attest-probe", session.report_data(n)),
        )
        bodies = _timed_each(
            client,
            "build_request",
            list(zip(nonces, evidence, strict=True)),
            lambda ne: session.request_body(nonce=ne[0], evidence=ne[1], pairs=pairs),
        )
        requests = _timed_each(server, "parse_request", bodies, releaser.parse)
        expiries = _timed_each(
            server, "check_challenge", requests, lambda r: service.challenges.check(r.nonce)
        )
        verified = _timed_each(server, "verify_evidence", requests, releaser.verify_evidence)
        records = _timed_each(
            server, "read_records", requests, lambda r: store.release_records(r.pairs)
        )
        decided = _timed_each(
            server,
            "decide_wrap_sign",
            list(zip(requests, verified, records, strict=True)),
            lambda rvr: releaser.decide(rvr[0], rvr[1], rvr[2][0], rvr[2][1]),
        )
        encoded = _timed_each(server, "encode_response", decided, lambda d: d[0].to_json())
        claims = [
            Claim(nonce=r.nonce, expires_at=float(e or 0.0), entries=tuple(d[1]))
            for r, e, d in zip(requests, expiries, decided, strict=True)
        ]
        batches = [claims[i : i + _BATCH] for i in range(0, len(claims), _BATCH)]
        started = time.thread_time()
        for batch in batches:
            store.commit_claims(batch)
        server["commit_audit_and_nonce"] = (time.thread_time() - started) / count * 1e6
        _timed_each(
            client,
            "open_release",
            list(zip(encoded, nonces, strict=True)),
            lambda bn: session.open(bn[0], nonce=bn[1]),
        )
        # A revocation poll (issue 10, item 9): not a release step, its own cost, to compare.
        key_id = wire.fingerprint(session.public_key)
        session_key = SymmetricKey.from_bytes(service.session_key(key_id))
        polls = [
            RevocationPoll(session_key=session_key, runtime_key_id=key_id, since=0).body()
            for _ in range(count)
        ]
        started = time.thread_time()
        for body in polls:
            await service.revocations(body)
        poll = {"answer_poll": (time.thread_time() - started) / count * 1e6}
    return {
        "server": {name: server[name] for name in SERVER_STEPS},
        "client": {name: client[name] for name in CLIENT_STEPS},
        "poll": poll,
    }


def _timed(out: dict[str, float], name: str, count: int, fn: Callable[[], _T]) -> list[_T]:
    started = time.thread_time()
    results = [fn() for _ in range(count)]
    out[name] = (time.thread_time() - started) / count * 1e6
    return results


def _timed_each(
    out: dict[str, float], name: str, items: list[Any], fn: Callable[[Any], _T]
) -> list[_T]:
    started = time.thread_time()
    results = [fn(item) for item in items]
    out[name] = (time.thread_time() - started) / len(items) * 1e6
    return results
