"""The audit log is tamper-evident (issue 10, item 8): whoever holds the database disk can drop
the append-only triggers and rewrite rows, and every such history is detected, by the
KeyService (forged or cut-back heads) or by an owner verifying a signed checkpoint."""

# The tests write SQL of their own on purpose (the attacks): S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from sealserve.errors import AuditLogTampered
from sealserve.protocol import AuditPage, AuditPoint, verify_audit, wire
from tests.unit.keyservice.test_app import Harness, run

DROP_TRIGGERS = (
    "DROP TRIGGER IF EXISTS audit_log_no_update",
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
)


async def _pages(h: Harness, after: int = 0) -> list[AuditPage]:
    pages = []
    while True:
        r = await h.signed(h.owner, "GET", f"/v1/audit?after={after}&limit=3")
        if r.status_code == 500:  # the KeyService refused the head itself (a signed answer)
            raise AuditLogTampered(r.json()["error"])
        assert r.status_code == 200, r.text
        page = AuditPage.from_json(r.content)
        pages.append(page)
        if not page.records or page.records[-1].seq >= page.checkpoint.seq:
            return pages
        after = page.records[-1].seq


async def _verify(h: Harness, start: AuditPoint | None = None) -> AuditPoint:
    start = start or AuditPoint.start()
    result = verify_audit(
        await _pages(h, start.seq),
        start=start,
        keyservice_id=h.service.keyservice_id,
        signing_public_key=h.service.signing_public_key,
    )
    return result.checkpoint


async def _history(h: Harness) -> str:
    """A few entries of the owner's and of others', and a release."""
    mid, _, _ = await h.setup_grant()
    r, _, _ = await h.release([(h.user.principal_id, mid)])
    assert r.status_code == 200
    return mid


def _tamper(h: Harness, *statements: str) -> None:
    with h.service.store._require_engine().begin() as conn:
        for statement in (*DROP_TRIGGERS, *statements):
            conn.exec_driver_sql(statement)


def test_an_owner_verifies_its_entries_against_a_signed_checkpoint() -> None:
    async def body(h: Harness) -> None:
        mid = await _history(h)
        pages = await _pages(h)
        assert len(pages) > 1  # paged (3 a page)
        result = verify_audit(
            pages,
            start=AuditPoint.start(),
            keyservice_id=h.service.keyservice_id,
            signing_public_key=h.service.signing_public_key,
        )
        events = [e["event"] for e in result.entries]
        assert events == ["register", "put_model_key", "grant", "put_request_key", "release"]
        assert all(e["model_id"] in (None, mid) for e in result.entries)
        assert result.verified == result.checkpoint.seq == 6  # the user's registration: a digest
        # Later: verify only what is new since the kept checkpoint.
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/grants/{h.user.principal_id}")
        assert r.status_code == 200
        later = await _verify(h, result.checkpoint)
        assert later.seq == 7

    run(body)


@pytest.mark.parametrize(
    ("statements", "why"),
    [
        pytest.param(("DELETE FROM audit_log WHERE seq = 3",), "missing", id="delete-one"),
        pytest.param(
            (
                "DELETE FROM audit_log WHERE seq = 3",
                "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3",
            ),
            "MAC does not verify",
            id="delete-and-renumber",
        ),
        pytest.param(
            ("UPDATE audit_log SET user_id = NULL WHERE event = 'grant'",), "altered", id="edit"
        ),
        pytest.param(
            (
                "UPDATE audit_log SET user_id = NULL, digest = X'" + "00" * 32 + "' "
                "WHERE event = 'register' AND seq = 2",
            ),
            "rewritten",
            id="edit-anothers-entry-and-its-digest",
        ),
    ],
)
def test_a_rewritten_history_does_not_reach_the_signed_checkpoint(
    statements: tuple[str, ...], why: str
) -> None:
    async def body(h: Harness) -> None:
        await _history(h)
        await _verify(h)
        _tamper(h, *statements)
        with pytest.raises(AuditLogTampered, match=why):
            await _verify(h)

    run(body)


def test_a_forged_entry_is_refused_by_the_keyservice() -> None:
    """An INSERT on a copy of the database cannot carry a valid MAC: the KeyService neither
    links to it nor signs a checkpoint of it (the owner learns it, in a signed answer)."""

    async def body(h: Harness) -> None:
        mid = await _history(h)
        forged = os.urandom(32).hex()
        insert = (
            "INSERT INTO audit_log (seq, at, event, actor, model_id, digest, chain, mac) "
            f"VALUES (7, 1.0, 'grant', '{'e' * 64}', '{mid}', X'{forged}', X'{forged}', "
            f"X'{forged}')"
        )
        _tamper(h, insert)
        r = await h.signed(h.owner, "GET", "/v1/audit?after=0&limit=10")
        assert r.status_code == 500
        assert "MAC does not verify" in r.json()["error"]
        r = await h.signed(h.owner, "DELETE", f"/v1/models/{mid}/grants/{h.user.principal_id}")
        assert r.status_code == 500  # no entry is linked to a forged head

    run(body)


def test_an_unchained_entry_after_chained_ones_is_refused() -> None:
    async def body(h: Harness) -> None:
        await _history(h)
        actor = "e" * 64
        _tamper(h, f"INSERT INTO audit_log (seq, at, event, actor) VALUES (7, 1.0, 'x', '{actor}')")
        r = await h.signed(h.owner, "GET", "/v1/audit?after=0&limit=10")
        assert r.status_code == 500
        assert "unchained" in r.json()["error"]

    run(body)


def test_a_truncated_history_is_detected() -> None:
    """Cut back to a genuine earlier head: the KeyService that saw more refuses it; after a
    restart (which forgets) an owner holding a later checkpoint still finds it."""

    async def body(h: Harness) -> None:
        await _history(h)
        kept = await _verify(h)
        _tamper(h, f"DELETE FROM audit_log WHERE seq > {kept.seq - 2}")
        r = await h.signed(h.owner, "GET", "/v1/audit?after=0&limit=10")
        assert r.status_code == 500
        assert "which this KeyService saw" in r.json()["error"]
        h.service.audit_chain._seen = 0  # what a restarted KeyService remembers
        assert (await _verify(h)).seq == kept.seq - 2  # fine for one who never saw more
        with pytest.raises(AuditLogTampered, match="truncated"):
            await _verify(h, kept)

    run(body)


def test_a_consistently_recomputed_history_fails_at_the_mac() -> None:
    """Rewrite an entry and recompute every digest and chain value after it (the hash chain
    alone has no secret): the head's MAC is the KeyService's, so it refuses the head."""

    async def body(h: Harness) -> None:
        from sealserve.protocol import audit

        await _history(h)
        engine = h.service.store._require_engine()
        with engine.begin() as conn:
            for statement in DROP_TRIGGERS:
                conn.exec_driver_sql(statement)
            rows = conn.execute(sa.text("SELECT * FROM audit_log ORDER BY seq")).mappings().all()
            chain = audit.GENESIS
            for row in rows:
                fields = {name: row[name] for name in audit.AUDIT_FIELDS}
                if row["event"] == "grant":
                    fields["user_id"] = "f" * 64
                digest = audit.entry_digest(row["seq"], fields)
                chain = audit.next_chain(chain, digest)
                conn.execute(
                    sa.text(
                        "UPDATE audit_log SET user_id = :u, digest = :d, chain = :c WHERE seq = :s"
                    ),
                    {"u": fields["user_id"], "d": digest, "c": chain, "s": row["seq"]},
                )
        r = await h.signed(h.owner, "GET", "/v1/audit?after=0&limit=10")
        assert r.status_code == 500
        assert "MAC does not verify" in r.json()["error"]

    run(body)


def test_a_checkpoint_not_signed_by_the_keyservice_is_refused() -> None:
    async def body(h: Harness) -> None:
        await _history(h)
        pages = await _pages(h)
        last = pages[-1]
        forged = AuditPage(
            records=last.records,
            checkpoint=type(last.checkpoint)(
                keyservice_id=last.checkpoint.keyservice_id,
                seq=last.checkpoint.seq,
                chain=last.checkpoint.chain,
                at=last.checkpoint.at + 1,
                signature=last.checkpoint.signature,
            ),
        )
        with pytest.raises(AuditLogTampered, match="not signed"):
            verify_audit(
                [*pages[:-1], forged],
                start=AuditPoint.start(),
                keyservice_id=h.service.keyservice_id,
                signing_public_key=h.service.signing_public_key,
            )
        assert wire.b64decode(last.checkpoint.signature)

    run(body)
