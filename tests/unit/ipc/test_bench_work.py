"""The useful work of ``sealserve bench ipc``: every byte written, every byte checked."""

from __future__ import annotations

import pytest

from sealserve.bench._ipc_work import HEADER_BYTES, CheckFailed, Work


def _message(work: Work, seq: int, sent: int = 7) -> memoryview:
    buf = memoryview(bytearray(work.size))
    work.fill(buf, seq, sent)
    return buf


@pytest.mark.parametrize("size", [16, 64, 4096, 300_000])
def test_a_filled_message_checks_and_carries_its_header(size: int) -> None:
    work = Work(size)
    assert work.check(_message(work, 12345, sent=99)) == (12345, 99)


def test_consecutive_messages_differ_in_every_body_byte() -> None:
    work = Work(4096)
    a, b = _message(work, 1), _message(work, 2)
    assert all(x != y for x, y in zip(a[HEADER_BYTES:], b[HEADER_BYTES:], strict=True))


@pytest.mark.parametrize("at", [HEADER_BYTES, 1000, 4095])
def test_a_torn_or_corrupt_byte_anywhere_is_caught(at: int) -> None:
    work = Work(4096)
    msg = _message(work, 5)
    msg[at] ^= 0xFF
    with pytest.raises(CheckFailed, match="torn, stale or corrupt"):
        work.check(msg)


def test_a_stale_body_under_a_fresh_header_is_caught() -> None:
    work = Work(4096)
    old, new = _message(work, 41), _message(work, 42)
    old[:HEADER_BYTES] = new[:HEADER_BYTES]  # the header was written, the body was not
    with pytest.raises(CheckFailed):
        work.check(old)


def test_a_short_message_is_caught() -> None:
    work = Work(4096)
    with pytest.raises(CheckFailed, match="expected 4096"):
        work.check(_message(work, 1)[:4000])


def test_chunked_fill_and_piecewise_check_agree_with_the_whole() -> None:
    work = Work(10_000)
    buf = memoryview(bytearray(work.size))
    published: list[int] = []
    work.fill_chunked(buf, 77, 5, 3000, published.append)
    assert published == [3016, 6016, 9016, 10_000]
    assert buf.tobytes() == _message(work, 77, sent=5).tobytes()
    start = 0
    for end in published:
        work.feed(buf[start:end])
        start = end
    assert work.finish() == (77, 5)
    work.feed(buf[:3016])
    bad = bytearray(buf[3016:])
    bad[10] ^= 1
    with pytest.raises(CheckFailed, match="at byte 3016"):
        work.feed(memoryview(bad))


def test_sizes_below_the_header_are_refused() -> None:
    with pytest.raises(ValueError, match="size must be >= 16"):
        Work(8)
