from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest

from sealserve._clock import ManualClock
from sealserve.crypto import (
    ENVELOPE_OVERHEAD,
    MAX_PLAINTEXT_BYTES,
    RequestKey,
    SymmetricKey,
    seal,
    seal_into,
    sealed_size,
    unseal,
    unseal_into,
    unsealed_size,
)
from sealserve.errors import InvalidEnvelope

VECTORS = json.loads((Path(__file__).parent / "vectors" / "crypto_v1.json").read_text())
CTX = {"purpose": "inference-input", "model_id": "m-1", "request_id": "r-1"}


def test_round_trip_and_size() -> None:
    key = SymmetricKey.generate()
    envelope = seal(key, b"payload", context=CTX)
    assert isinstance(envelope, bytes)
    assert len(envelope) == sealed_size(7) == 7 + ENVELOPE_OVERHEAD
    assert unsealed_size(len(envelope)) == 7
    assert unseal(key, envelope, context=CTX) == b"payload"


def test_every_seal_uses_a_fresh_nonce() -> None:
    key = SymmetricKey.generate()
    assert seal(key, b"same", context=CTX) != seal(key, b"same", context=CTX)


def test_known_answer_envelope_still_unseals() -> None:
    kat = VECTORS["envelope"]
    key = SymmetricKey.from_bytes(bytes.fromhex(kat["key"]))
    plaintext = unseal(key, bytes.fromhex(kat["envelope"]), context=kat["context"])
    assert plaintext == bytes.fromhex(kat["plaintext"])


def test_memoryview_and_bytearray_inputs() -> None:
    key = SymmetricKey.generate()
    envelope = bytearray(seal(key, memoryview(b"abc"), context=CTX))
    assert unseal(key, memoryview(envelope), context=CTX) == b"abc"
    padded = memoryview(b"xx" + bytes(envelope) + b"yy")[2:-2]
    assert unseal(key, padded, context=CTX) == b"abc"


def test_empty_plaintext() -> None:
    key = SymmetricKey.generate()
    assert unseal(key, seal(key, b"", context=CTX), context=CTX) == b""


def test_seal_into_and_unseal_into_a_preallocated_buffer() -> None:
    key = SymmetricKey.generate()
    out = bytearray(sealed_size(5) + 10)
    n = seal_into(key, b"hello", out, context=CTX)
    assert n == sealed_size(5)
    plain = bytearray(8)
    assert unseal_into(key, memoryview(out)[:n], plain, context=CTX) == 5
    assert plain[:5] == b"hello"


def test_unseal_into_zeroes_what_it_wrote_on_failure() -> None:
    key = SymmetricKey.generate()
    envelope = bytearray(seal(key, b"secret!!", context=CTX))
    envelope[-1] ^= 1
    plain = bytearray(b"\xff" * 8)
    with pytest.raises(InvalidEnvelope):
        unseal_into(key, envelope, plain, context=CTX)
    assert plain == bytes(8)


def test_buffers_that_are_too_small_or_read_only() -> None:
    key = SymmetricKey.generate()
    with pytest.raises(ValueError, match="needs 43"):
        seal_into(key, b"hello", bytearray(10), context=CTX)
    with pytest.raises(TypeError, match="writable"):
        seal_into(key, b"hello", bytes(100), context=CTX)
    envelope = seal(key, b"hello", context=CTX)
    with pytest.raises(ValueError, match="needs 5"):
        unseal_into(key, envelope, bytearray(4), context=CTX)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda e: e[:-1], id="truncated"),
        pytest.param(lambda e: e + b"\x00", id="extended"),
        pytest.param(lambda e: b"\x02" + e[1:], id="version"),
        pytest.param(lambda e: e[:1] + b"\x02" + e[2:], id="suite"),
        pytest.param(lambda e: e[:5] + bytes([e[5] ^ 1]) + e[6:], id="timestamp"),
        pytest.param(lambda e: e[: ENVELOPE_OVERHEAD - 1], id="too-short"),
        pytest.param(lambda e: b"", id="empty"),
    ],
)
def test_every_failure_is_the_same_error(mutate: object) -> None:
    key = SymmetricKey.generate()
    envelope = seal(key, b"payload", context=CTX)
    with pytest.raises(InvalidEnvelope) as info:
        unseal(key, mutate(envelope), context=CTX)  # type: ignore[operator]
    assert str(info.value) == InvalidEnvelope.MESSAGE


def test_wrong_key_and_wrong_context_fail_alike() -> None:
    key = SymmetricKey.generate()
    envelope = seal(key, b"payload", context=CTX)
    messages = set()
    for other_key, ctx in [
        (SymmetricKey.generate(), CTX),
        (key, {**CTX, "request_id": "r-2"}),
        (key, {**CTX, "extra": ""}),
        (key, {"purpose": "inference-output", "model_id": "m-1", "request_id": "r-1"}),
    ]:
        with pytest.raises(InvalidEnvelope) as info:
            unseal(other_key, envelope, context=ctx)
        messages.add(str(info.value))
    assert messages == {InvalidEnvelope.MESSAGE}


def test_failure_reason_goes_to_the_debug_log_only(
    sealserve_logs: pytest.LogCaptureFixture,
) -> None:
    key = SymmetricKey.generate()
    envelope = seal(key, b"payload", context=CTX)
    with pytest.raises(InvalidEnvelope):
        unseal(key, envelope[:-1], context=CTX)
    records = sealserve_logs.records
    assert [r.getMessage() for r in records] == ["envelope.rejected"]
    assert records[0].levelno == logging.DEBUG
    assert records[0].sealserve_fields == {"reason": "tag"}  # type: ignore[attr-defined]


def test_max_age_is_checked_against_the_injected_clock() -> None:
    key = SymmetricKey.generate()
    clock = ManualClock(start=1_800_000_000)
    envelope = seal(key, b"x", context=CTX, clock=clock)
    clock.advance(59)
    assert unseal(key, envelope, context=CTX, max_age_s=60, clock=clock) == b"x"
    clock.advance(2)
    with pytest.raises(InvalidEnvelope):
        unseal(key, envelope, context=CTX, max_age_s=60, clock=clock)
    assert unseal(key, envelope, context=CTX, clock=clock) == b"x"  # no age check asked
    past = ManualClock(start=1_800_000_000 - 3600)
    with pytest.raises(InvalidEnvelope):  # sealed "in the future"
        unseal(key, envelope, context=CTX, max_age_s=60, clock=past)


@pytest.mark.parametrize(
    ("context", "error", "match"),
    [
        ({}, ValueError, "purpose"),
        ({"purpose": ""}, ValueError, "purpose"),
        ({"purpose": "p", "n": 1}, TypeError, r"context\['n'\]"),
        ("purpose", TypeError, "mapping"),
    ],
)
def test_context_must_be_a_mapping_of_strings_with_a_purpose(
    context: object, error: type[Exception], match: str
) -> None:
    key = SymmetricKey.generate()
    with pytest.raises(error, match=match):
        seal(key, b"x", context=context)  # type: ignore[arg-type]


def test_caller_mistakes_are_type_errors() -> None:
    with pytest.raises(TypeError, match="SymmetricKey"):
        seal(b"k" * 32, b"x", context=CTX)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes-like"):
        seal(SymmetricKey.generate(), "text", context=CTX)  # type: ignore[arg-type]


def test_size_limits() -> None:
    with pytest.raises(ValueError, match="plaintext_len"):
        sealed_size(MAX_PLAINTEXT_BYTES + 1)
    with pytest.raises(ValueError, match="not the length"):
        unsealed_size(ENVELOPE_OVERHEAD - 1)


def test_keys_never_show_their_material() -> None:
    raw = bytes(range(32))
    key = SymmetricKey.from_bytes(raw)
    assert raw.hex() not in repr(key)
    assert len(key.fingerprint) == 16
    assert key == SymmetricKey.from_bytes(raw)
    assert key != SymmetricKey.generate()
    with pytest.raises(TypeError, match="picklable"):
        pickle.dumps(key)
    with pytest.raises(ValueError, match="32 bytes"):
        SymmetricKey.from_bytes(b"short")


def test_request_key_directions_use_different_subkeys() -> None:
    rk = RequestKey.generate()
    assert rk.input_key != rk.output_key
    assert rk.input_key != SymmetricKey.from_bytes(rk.to_bytes())
    again = RequestKey.from_bytes(rk.to_bytes())
    assert again == rk
    assert again.input_key == rk.input_key
    assert again.output_key == rk.output_key
    envelope = seal(rk.input_key, b"input", context=CTX)
    with pytest.raises(InvalidEnvelope):
        unseal(rk.output_key, envelope, context=CTX)
    assert rk.to_bytes().hex() not in repr(rk)


@pytest.mark.parametrize("size", [64 * 1024 - 38, 64 * 1024, 64 * 1024 + 1, 300 * 1024])
def test_large_envelopes_are_built_and_opened_in_place(size: int) -> None:
    key = SymmetricKey.generate()
    plaintext = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    envelope = seal(key, plaintext, context=CTX)
    assert isinstance(envelope, bytes)
    assert len(envelope) == sealed_size(size)
    opened = unseal(key, envelope, context=CTX)
    assert type(opened) is bytes
    assert opened == plaintext
    for position in (0, 11, 30, len(envelope) // 2, len(envelope) - 1):
        tampered = bytearray(envelope)
        tampered[position] ^= 0x80
        with pytest.raises(InvalidEnvelope):
            unseal(key, tampered, context=CTX)
    with pytest.raises(InvalidEnvelope):
        unseal(key, envelope, context={**CTX, "request_id": "other"})


def test_one_key_is_safe_to_share_between_threads() -> None:
    import threading

    key = SymmetricKey.generate()
    payloads = [bytes([i]) * (100_000 + i) for i in range(4)]
    failures: list[int] = []

    def work(i: int) -> None:
        for _ in range(25):
            if unseal(key, seal(key, payloads[i], context=CTX), context=CTX) != payloads[i]:
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
