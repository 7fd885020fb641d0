from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from sealserve._clock import ManualClock
from sealserve.crypto import (
    NONCE_HEADER,
    PRINCIPAL_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Identity,
    RequestVerifier,
    sign_request,
    signed_principal,
)
from sealserve.errors import InvalidSignature, ReplayQuotaExceeded

VECTORS = json.loads((Path(__file__).parent / "vectors" / "crypto_v1.json").read_text())
START = 1_800_000_000.0


def _signed(
    me: Identity, clock: ManualClock, *, body: bytes = b"{}", path: str = "/v1/x"
) -> dict[str, str]:
    return sign_request(me, method="POST", path=path, body=body, clock=clock)


def test_signed_request_verifies_once() -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    verifier = RequestVerifier(replay_window_s=300, clock=clock, max_per_principal=10)
    headers = _signed(me, clock)
    assert signed_principal(headers) == me.principal_id
    verifier.verify(me.public_key_bytes, method="post", path="/v1/x", body=b"{}", headers=headers)
    with pytest.raises(InvalidSignature):
        verifier.verify(
            me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
        )


def test_known_answer_request_verifies_at_its_time() -> None:
    kat = VECTORS["signed_request"]
    clock = ManualClock(start=kat["now"])
    verifier = RequestVerifier(clock=clock)
    verifier.verify(
        bytes.fromhex(kat["public_key"]),
        method=kat["method"],
        path=kat["path"],
        body=bytes.fromhex(kat["body"]),
        headers=kat["headers"],
    )
    assert signed_principal(kat["headers"]) == kat["principal_id"]


def test_header_names_are_case_insensitive() -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    headers = {k.title(): v for k, v in _signed(me, clock).items()}
    RequestVerifier(clock=clock).verify(
        me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("PUT", "/v1/x", b"{}"), ("POST", "/v1/y", b"{}"), ("POST", "/v1/x", b"{ }")],
)
def test_every_signed_field_is_bound(method: str, path: str, body: bytes) -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    headers = _signed(me, clock)
    with pytest.raises(InvalidSignature):
        RequestVerifier(clock=clock).verify(
            me.public_key_bytes, method=method, path=path, body=body, headers=headers
        )


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (TIMESTAMP_HEADER, str(int(START) + 1)),
        (TIMESTAMP_HEADER, "-5"),
        (TIMESTAMP_HEADER, "soon"),
        (NONCE_HEADER, "00" * 16),
        (NONCE_HEADER, "zz" * 16),
        (SIGNATURE_HEADER, "!!!"),
        (SIGNATURE_HEADER, ""),
        (PRINCIPAL_HEADER, "00" * 32),
    ],
)
def test_tampered_headers_fail(header: str, value: str) -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    headers = {**_signed(me, clock), header: value}
    with pytest.raises(InvalidSignature):
        RequestVerifier(clock=clock).verify(
            me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
        )


@pytest.mark.parametrize(
    "header", [PRINCIPAL_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER]
)
def test_missing_headers_fail(header: str) -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    headers = _signed(me, clock)
    del headers[header]
    with pytest.raises(InvalidSignature):
        RequestVerifier(clock=clock).verify(
            me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
        )


def test_signature_of_another_principal_fails() -> None:
    me, mallory, clock = Identity.generate(), Identity.generate(), ManualClock(start=START)
    headers = _signed(mallory, clock)
    with pytest.raises(InvalidSignature):
        RequestVerifier(clock=clock).verify(
            me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
        )


def test_timestamps_outside_the_window_fail_both_ways() -> None:
    me = Identity.generate()
    signer_clock = ManualClock(start=START)
    headers = _signed(me, signer_clock)
    late = ManualClock(start=START + 301)
    early = ManualClock(start=START - 301)
    edge = ManualClock(start=START + 300)
    for clock in (late, early):
        with pytest.raises(InvalidSignature):
            RequestVerifier(replay_window_s=300, clock=clock).verify(
                me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
            )
    RequestVerifier(replay_window_s=300, clock=edge).verify(
        me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
    )


def test_nonces_are_forgotten_once_their_window_has_passed() -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    verifier = RequestVerifier(replay_window_s=10, clock=clock, max_per_principal=2)
    for _ in range(2):
        h = _signed(me, clock)
        verifier.verify(me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=h)
    assert verifier.remembered == 2
    third = _signed(me, clock)
    with pytest.raises(ReplayQuotaExceeded):  # full: refuse rather than forget a live nonce
        verifier.verify(me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=third)
    clock.advance(11)
    fresh = _signed(me, clock)
    verifier.verify(me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=fresh)
    assert verifier.remembered == 1


def test_one_principal_filling_its_share_never_refuses_another() -> None:
    """The attack of issue 10 (item 2): one principal fills the replay memory with valid
    requests timestamped near the window's edge; another principal's requests still pass."""
    attacker, owner = Identity.generate(), Identity.generate()
    clock = ManualClock(start=START)
    verifier = RequestVerifier(replay_window_s=300, clock=clock, max_per_principal=50)
    edge = ManualClock(start=START + 299)  # nonces that live as long as possible
    for _ in range(50):
        h = _signed(attacker, edge)
        verifier.verify(
            attacker.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=h
        )
    h = _signed(attacker, edge)
    with pytest.raises(ReplayQuotaExceeded):
        verifier.verify(
            attacker.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=h
        )
    for _ in range(50):  # the owner has a whole share of its own
        h = _signed(owner, clock)
        verifier.verify(owner.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=h)
    assert verifier.remembered == 100


def test_check_remembers_nothing_until_remember() -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    verifier = RequestVerifier(clock=clock)
    h = _signed(me, clock)
    first = verifier.check(me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=h)
    again = verifier.check(me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=h)
    assert first == again
    assert first.principal_id == me.principal_id
    assert first.expires_at == first.timestamp + 300
    assert verifier.remembered == 0
    verifier.remember(first)
    with pytest.raises(InvalidSignature):
        verifier.remember(again)


def test_concurrent_replays_are_accepted_exactly_once() -> None:
    me, clock = Identity.generate(), ManualClock(start=START)
    verifier = RequestVerifier(clock=clock)
    headers = _signed(me, clock)
    accepted: list[int] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            verifier.verify(
                me.public_key_bytes, method="POST", path="/v1/x", body=b"{}", headers=headers
            )
            accepted.append(1)
        except InvalidSignature:
            pass

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert accepted == [1]


def test_constructor_and_argument_validation() -> None:
    with pytest.raises(ValueError, match="replay_window_s"):
        RequestVerifier(replay_window_s=0)
    with pytest.raises(ValueError, match="max_per_principal"):
        RequestVerifier(max_per_principal=0)
    me = Identity.generate()
    with pytest.raises(ValueError, match="method"):
        sign_request(me, method="FETCH", path="/x", body=b"")
    with pytest.raises(ValueError, match="path"):
        sign_request(me, method="GET", path="x", body=b"")
    with pytest.raises(InvalidSignature):
        signed_principal({})


def test_identity_wraps_a_given_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    assert Identity(key).public_key_bytes == key.public_key().public_bytes_raw()
