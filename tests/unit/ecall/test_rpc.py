"""Calls over the in-process ipc backend: replies, payloads in place, errors, a dead peer."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from sealserve.ecall import Endpoint, Message, wire
from sealserve.errors import (
    AccessDenied,
    DeadlineExceeded,
    InvalidEnvelope,
    KeyServiceError,
    ModelNotAvailable,
    RuntimeUnavailable,
)
from sealserve.ipc import ChannelOptions, Connection

Op = wire.Op


class Echo:
    """A handler that answers on a thread, as the runtime's executor does."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(4)
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, message: Message) -> None:
        self.pool.submit(self.serve, message)

    def serve(self, message: Message) -> None:
        assert self.endpoint is not None
        self.hold.wait(10)
        meta = message.meta
        if "fail" in meta:
            message.release()
            errors = {
                "envelope": InvalidEnvelope(),
                "denied": AccessDenied(),
                "model": ModelNotAvailable("no model 'x'"),
                "crash": ZeroDivisionError("secret detail"),
                "busy": _retryable(KeyServiceError("unreachable")),
            }
            self.endpoint.reply_error(message, errors[meta["fail"]])
            return
        data = bytes(message.payload)
        message.release()
        if meta.get("deferred"):
            seen: dict[str, int] = {}

            def write(view: memoryview) -> None:
                view[:] = data[::-1]
                seen["wrote"] = len(view)

            self.endpoint.reply(
                message, lambda: {"wrote": seen["wrote"]}, payload_len=len(data), writer=write
            )
        else:
            self.endpoint.reply(message, {"echo": meta, "n": len(data)}, data.upper())


def _retryable(exc: KeyServiceError) -> KeyServiceError:
    exc.retryable = True
    return exc


@pytest.fixture
def pair() -> Iterator[tuple[Endpoint, Endpoint, Echo]]:
    host_conn, rt_conn = Connection.create_inprocess_pair(
        request=ChannelOptions(arena_bytes=8 << 20), response=ChannelOptions(arena_bytes=8 << 20)
    )
    echo = Echo()
    host = Endpoint(host_conn, name="host").open()
    runtime = Endpoint(rt_conn, name="runtime", handler=echo).open()
    echo.endpoint = runtime
    try:
        yield host, runtime, echo
    finally:
        echo.hold.set()
        host.close()
        runtime.close()
        echo.pool.shutdown()


def test_a_call_gets_its_reply_with_meta_and_payload(
    pair: tuple[Endpoint, Endpoint, Echo],
) -> None:
    host, _, _ = pair
    with host.call(Op.STATS, {"a": 1}, b"hello", timeout=10) as reply:
        assert reply.meta == {"echo": {"a": 1}, "n": 5}
        assert bytes(reply.payload) == b"HELLO"
        assert reply.op is Op.STATS


def test_many_concurrent_calls_each_get_their_own_reply(
    pair: tuple[Endpoint, Endpoint, Echo],
) -> None:
    host, _, _ = pair
    futures = {host.call_async(Op.INFER, {"i": i}, f"req-{i}".encode()): i for i in range(40)}
    for future in concurrent.futures.as_completed(futures, timeout=30):
        i = futures[future]
        with future.result() as reply:  # each caller releases its own reply when done
            assert reply.meta["echo"] == {"i": i}
            assert bytes(reply.payload) == f"REQ-{i}".encode()


def test_payloads_written_in_place_and_meta_computed_after(
    pair: tuple[Endpoint, Endpoint, Echo],
) -> None:
    host, _, _ = pair
    data = bytes(range(256)) * 1024
    call = host.open_call(Op.INFER, {"deferred": True}, payload_len=len(data))
    call.payload[: len(data) // 2] = data[: len(data) // 2]  # e.g. an HTTP body, in pieces
    call.payload[len(data) // 2 :] = data[len(data) // 2 :]
    with call.send().result(10) as reply:
        assert bytes(reply.payload) == data[::-1]
        assert reply.meta == {"wrote": len(data)}


def test_a_discarded_call_sends_nothing(pair: tuple[Endpoint, Endpoint, Echo]) -> None:
    host, _, _ = pair
    with host.open_call(Op.INFER, {}, payload_len=100) as call:
        call.payload[:3] = b"abc"
    with host.call(Op.INFER, {"after": True}, b"x", timeout=10) as reply:
        assert reply.meta["echo"] == {"after": True}


@pytest.mark.parametrize(
    ("fail", "error", "message"),
    [
        ("envelope", InvalidEnvelope, "invalid envelope"),
        ("denied", AccessDenied, "access denied"),
        ("model", ModelNotAvailable, "no model 'x'"),
        ("crash", Exception, "internal error (ZeroDivisionError)"),
    ],
)
def test_errors_cross_the_boundary_as_their_class_with_no_detail(
    pair: tuple[Endpoint, Endpoint, Echo], fail: str, error: type[Exception], message: str
) -> None:
    host, _, _ = pair
    with pytest.raises(error) as info:
        host.call(Op.INFER, {"fail": fail}, b"", timeout=10)
    assert str(info.value) == message
    assert "secret" not in str(info.value)


def test_a_retryable_error_stays_retryable(pair: tuple[Endpoint, Endpoint, Echo]) -> None:
    host, _, _ = pair
    with pytest.raises(KeyServiceError) as info:
        host.call(Op.INFER, {"fail": "busy"}, b"", timeout=10)
    assert info.value.retryable


def test_a_reply_after_the_deadline_is_released_not_leaked(
    pair: tuple[Endpoint, Endpoint, Echo],
) -> None:
    host, _, echo = pair
    echo.hold.clear()
    with pytest.raises(DeadlineExceeded):
        host.call(Op.INFER, {"late": True}, b"x", timeout=0.05)
    echo.hold.set()
    with host.call(Op.INFER, {"next": True}, b"y", timeout=10) as reply:
        assert reply.meta["echo"] == {"next": True}
    assert host._conn.subscriber.held == 0  # the late reply was handed back


def test_a_dead_peer_fails_pending_and_later_calls_with_a_retryable_error(
    pair: tuple[Endpoint, Endpoint, Echo],
) -> None:
    host, runtime, echo = pair
    echo.hold.clear()
    pending = host.call_async(Op.INFER, {}, b"x")
    runtime._conn.link.kill()  # type: ignore[attr-defined]  # vanish as a crash would
    with pytest.raises(RuntimeUnavailable) as info:
        pending.result(10)
    assert info.value.retryable
    with pytest.raises(RuntimeUnavailable):
        host.call(Op.INFER, {}, b"x", timeout=1)
    assert host.wait_closed(10)


def test_malformed_frames_are_dropped_and_the_channel_keeps_working(
    pair: tuple[Endpoint, Endpoint, Echo],
) -> None:
    host, _, _ = pair
    host._conn.publisher.send(b"not a frame")
    host._conn.publisher.send(b"SSRT" + b"\x00" * 60)
    with host.call(Op.STATS, {}, b"ok", timeout=10) as reply:
        assert bytes(reply.payload) == b"OK"


def test_a_detached_message_keeps_its_payload_and_frees_the_channel(
    pair: tuple[Endpoint, Endpoint, Echo],
) -> None:
    host, _, _ = pair
    reply = host.call(Op.STATS, {}, b"abc", timeout=10)
    assert host._conn.subscriber.held == 1
    private = reply.detach()
    assert host._conn.subscriber.held == 0
    assert bytes(private) == b"ABC"
    assert bytes(reply.payload) == b"ABC"
    reply.release()
