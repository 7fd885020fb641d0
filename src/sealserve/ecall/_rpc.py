"""Calls over an ipc connection: one endpoint on each side, frames in shared memory.

An :class:`Endpoint` wraps one process's end of an :class:`~sealserve.ipc.Connection`: its
publisher carries this side's calls and replies, its subscriber the peer's.  One receiver
thread reads the subscriber: a reply completes the future of its call, a call goes to the
``handler`` (which must not block: it hands the work to an executor and replies later).

Frames are written in place (:meth:`Publisher.loan`, then ``commit``) and read in place (a
:class:`Message` views the sample it came in; ``release()`` returns the slot), so a payload
crosses the process boundary with no copy beyond the one that produces it: a model written
by the host straight from its file into the loan, an output sealed by the runtime straight
into the loan.

When the peer dies or closes, every call still waiting fails with the error ``broken_error``
makes (the host makes it :class:`~sealserve.errors.RuntimeUnavailable`, which is retryable),
and so does every later call.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sealserve._log import get_logger
from sealserve._resource import Resource, ResourceState
from sealserve.ecall._wire import (
    Frame,
    Kind,
    Op,
    Status,
    encode_meta,
    error_for,
    frame_size,
    parse_frame,
    status_for,
    write_header,
)
from sealserve.errors import (
    ChannelClosed,
    DeadlineExceeded,
    IPCError,
    PeerDied,
    RuntimeUnavailable,
)
from sealserve.ipc import Connection, Loan, Sample

__all__ = ["Endpoint", "Message", "OutgoingCall", "PayloadWriter"]

Buffer = bytes | bytearray | memoryview

_log = get_logger(__name__)
_POLL_S = 0.25
#: Bytes reserved for a meta object computed after the payload is written.
_DEFERRED_META_BYTES = 4096
#: Fills the payload of a frame in place (e.g. ``seal_into``, a file's ``readinto``).
PayloadWriter = Callable[[memoryview], None]


class Message:
    """A received frame, viewing shared memory until :meth:`release` (or ``with``)."""

    __slots__ = ("_frame", "_private", "_sample")

    def __init__(self, frame: Frame, sample: Sample | None) -> None:
        self._frame = frame
        self._sample = sample
        self._private: memoryview | None = None

    @property
    def op(self) -> Op:
        return self._frame.op

    @property
    def kind(self) -> Kind:
        return self._frame.kind

    @property
    def status(self) -> Status:
        return self._frame.status

    @property
    def call_id(self) -> int:
        return self._frame.call_id

    @property
    def meta(self) -> dict[str, Any]:
        return self._frame.meta

    @property
    def payload(self) -> memoryview:
        """The payload, in shared memory: valid until :meth:`release` (or, after
        :meth:`detach`, a private copy)."""
        if self._private is not None:
            return self._private
        if self._sample is not None and self._sample.released:
            raise IPCError("message was released; its payload is no longer yours")
        return self._frame.payload

    def detach(self) -> memoryview:
        """Copy the payload into private memory and release the shared memory now (for a
        message that will wait: holding shared memory would hold up the channel)."""
        if self._private is None:
            self._private = memoryview(bytearray(self.payload))
            self.release()
        return self._private

    def release(self) -> None:
        if self._sample is not None:
            self._sample.release()

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"Message(kind={self.kind.name}, op={self.op.name}, status={self.status.name}, "
            f"call_id={self.call_id}, payload={len(self._frame.payload)} bytes)"
        )


class OutgoingCall:
    """A call being written in place: fill :attr:`payload`, then :meth:`send` (or
    :meth:`discard`).  Made by :meth:`Endpoint.open_call`."""

    __slots__ = ("_endpoint", "_loan", "_offset", "_state", "call_id", "op", "payload_len")

    def __init__(
        self, endpoint: Endpoint, op: Op, call_id: int, loan: Loan, offset: int, payload_len: int
    ) -> None:
        self._endpoint = endpoint
        self.op = op
        self.call_id = call_id
        self._loan = loan
        self._offset = offset
        self.payload_len = payload_len
        self._state = "open"

    @property
    def payload(self) -> memoryview:
        """The writable payload, in shared memory."""
        if self._state != "open":
            raise IPCError(f"the call is {self._state}")
        return self._loan.view[self._offset : self._offset + self.payload_len]

    def send(self) -> concurrent.futures.Future[Message]:
        """Publish the call; the future gets its reply (see :meth:`Endpoint.call_async`)."""
        if self._state != "open":
            raise IPCError(f"the call is {self._state}")
        self._state = "sent"
        return self._endpoint._send_opened(self)

    def discard(self) -> None:
        """Give the space back; nothing is sent (idempotent)."""
        if self._state == "open":
            self._state = "discarded"
            self._loan.discard()

    def __enter__(self) -> OutgoingCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class Endpoint(Resource):
    """One side of the call surface over ``connection`` (see the module docstring).

    ``handler(message)`` receives the peer's calls on the receiver thread and owns them (it
    must release them and reply with :meth:`reply`/:meth:`reply_error`).  ``broken_error``
    makes the error pending and later calls fail with once the peer is gone
    (:attr:`broken`) or the endpoint is closed: its close races calls by design (a runtime
    restart closes the old generation's endpoint while requests may still reach it), so a
    call on a closed endpoint is that retryable error, not a programming error.  Opening it
    twice is one (:class:`~sealserve.errors.ResourceStateError`).
    """

    resource_name = "the endpoint"

    def __init__(
        self,
        connection: Connection,
        *,
        name: str,
        handler: Callable[[Message], None] | None = None,
        broken_error: Callable[[str], Exception] = RuntimeUnavailable,
        on_broken: Callable[[BaseException], None] | None = None,
        send_timeout_s: float = 30.0,
    ) -> None:
        if send_timeout_s <= 0:
            raise ValueError(f"send_timeout_s must be > 0, got {send_timeout_s!r}")
        super().__init__()
        self._conn = connection
        self.name = name
        self._handler = handler
        self._broken_error = broken_error
        self._on_broken = on_broken
        self._send_timeout_s = send_timeout_s
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future[Message]] = {}
        self._reason = ""
        self._is_broken = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def broken(self) -> bool:
        """Whether the peer died or left (calls fail with ``broken_error`` from then on)."""
        return self._is_broken

    def _open(self) -> None:
        """Start the receiver thread."""
        self._thread = threading.Thread(target=self._receive_loop, name=f"rpc-{self.name}")
        self._thread.daemon = True
        self._thread.start()

    def _close(self) -> None:
        """Stop receiving, fail what is pending, close the connection."""
        with self._lock:
            was_open = self._thread is not None and not self._is_broken
            self._reason = self._reason or "closed"
        self._fail_pending(self._broken_error(f"the {self.name} endpoint was closed"))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_POLL_S * 8)
        self._conn.close()
        if was_open:
            _log.event("rpc.closed", endpoint=self.name)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the receiver stops (the peer left, died, or :meth:`close`)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- calls ---------------------------------------------------------------------------------

    def call_async(
        self,
        op: Op,
        meta: Mapping[str, Any] | None = None,
        payload: Buffer | None = None,
        *,
        payload_len: int | None = None,
        writer: PayloadWriter | None = None,
        send_timeout: float | None = None,
    ) -> concurrent.futures.Future[Message]:
        """Send a call; the future gets its reply :class:`Message` (the caller releases it).

        The payload is ``payload`` (copied into shared memory once), or ``payload_len`` bytes
        that ``writer`` fills in place.  A reply with an error status sets that error.
        Waits up to ``send_timeout`` (default: the endpoint's) for room in the channel, then
        raises :class:`~sealserve.errors.BackpressureTimeout` (``0``: do not wait).
        """
        future: concurrent.futures.Future[Message] = concurrent.futures.Future()
        with self._lock:
            self._check_usable()
            call_id = next(self._ids)
            self._pending[call_id] = future
        try:
            self._send(
                Kind.CALL, op, Status.OK, call_id, meta, payload, payload_len, writer, send_timeout
            )
        except BaseException:
            with self._lock:
                self._pending.pop(call_id, None)
            raise
        return future

    def open_call(
        self,
        op: Op,
        meta: Mapping[str, Any] | None = None,
        *,
        payload_len: int,
        timeout: float | None = None,
    ) -> OutgoingCall:
        """Start a call whose ``payload_len``-byte payload the caller writes in place, piece
        by piece (e.g. an HTTP body as it arrives), then :meth:`OutgoingCall.send`."""
        if isinstance(payload_len, bool) or not isinstance(payload_len, int) or payload_len < 0:
            raise ValueError(f"payload_len must be an int >= 0, got {payload_len!r}")
        with self._lock:
            self._check_usable()
            call_id = next(self._ids)
        loan, offset = self._begin(
            Kind.CALL, op, Status.OK, call_id, encode_meta(meta), payload_len, timeout
        )
        return OutgoingCall(self, op, call_id, loan, offset, payload_len)

    def _send_opened(self, call: OutgoingCall) -> concurrent.futures.Future[Message]:
        future: concurrent.futures.Future[Message] = concurrent.futures.Future()
        with self._lock:
            if not self._usable():
                call._loan.discard()
                self._check_usable()
            self._pending[call.call_id] = future
        try:
            self._commit(call._loan)
        except BaseException:
            with self._lock:
                self._pending.pop(call.call_id, None)
            raise
        return future

    def call(
        self,
        op: Op,
        meta: Mapping[str, Any] | None = None,
        payload: Buffer | None = None,
        *,
        timeout: float | None,
        payload_len: int | None = None,
        writer: PayloadWriter | None = None,
    ) -> Message:
        """:meth:`call_async` and wait up to ``timeout`` seconds for the reply;
        :class:`~sealserve.errors.DeadlineExceeded` when it does not come in time."""
        future = self.call_async(op, meta, payload, payload_len=payload_len, writer=writer)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.abandon(future)
            raise DeadlineExceeded(f"no reply to {op.name.lower()} within {timeout:.3f}s") from None

    def abandon(self, future: concurrent.futures.Future[Message]) -> None:
        """Stop waiting for a call's reply: it is released whenever it arrives."""
        with self._lock:
            for call_id, pending in list(self._pending.items()):
                if pending is future:
                    del self._pending[call_id]
                    break
        future.add_done_callback(_release_result)

    def reply(
        self,
        call: Message,
        meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        payload: Buffer | None = None,
        *,
        payload_len: int | None = None,
        writer: PayloadWriter | None = None,
        timeout: float | None = None,
    ) -> None:
        """Answer ``call`` with a result.

        ``meta`` may be a function, called after ``writer`` has filled the payload (so it can
        report what the writing took); its JSON must fit in 4 KiB.
        """
        self._send(
            Kind.REPLY,
            call.op,
            Status.OK,
            call.call_id,
            meta,
            payload,
            payload_len,
            writer,
            timeout,
        )

    def reply_error(self, call: Message, exc: BaseException) -> None:
        """Answer ``call`` with the error ``exc`` (as ``_wire.status_for`` carries it)."""
        status, message = status_for(exc)
        try:
            self._send(
                Kind.REPLY,
                call.op,
                status,
                call.call_id,
                {"message": message, "retryable": bool(getattr(exc, "retryable", False))},
                None,
                None,
                None,
                None,
            )
        except (IPCError, RuntimeUnavailable) as send_exc:
            _log.event(
                "rpc.reply_lost", endpoint=self.name, op=call.op.name, error=type(send_exc).__name__
            )

    # -- internals -----------------------------------------------------------------------------

    def _usable(self) -> bool:
        return self.state is ResourceState.OPENED and not self._is_broken

    def _check_usable(self) -> None:
        if not self._usable():
            state = "broken" if self._is_broken else self.state.value
            raise self._broken_error(
                f"the {self.name} endpoint is {state}"
                + (f" ({self._reason})" if self._reason else "")
            )

    def _send(
        self,
        kind: Kind,
        op: Op,
        status: Status,
        call_id: int,
        meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
        payload: Buffer | None,
        payload_len: int | None,
        writer: PayloadWriter | None,
        timeout: float | None,
    ) -> None:
        if payload is not None and (writer is not None or payload_len is not None):
            raise ValueError("give either payload, or payload_len and writer, not both")
        if (writer is None) != (payload_len is None):
            raise ValueError("payload_len and writer go together")
        body = memoryview(payload).cast("B") if payload is not None else None
        n = len(body) if body is not None else (payload_len or 0)
        meta_raw = b" " * _DEFERRED_META_BYTES if callable(meta) else encode_meta(meta)
        loan, offset = self._begin(kind, op, status, call_id, meta_raw, n, timeout)
        try:
            view = loan.view
            if body is not None:
                view[offset : offset + n] = body
            elif writer is not None:
                writer(view[offset : offset + n])
            if callable(meta):
                late = encode_meta(meta())
                if len(late) > _DEFERRED_META_BYTES:
                    raise ValueError(f"deferred meta is {len(late)} bytes; at most 4096")
                padded = late + b" " * (_DEFERRED_META_BYTES - len(late))
                write_header(
                    view, kind=kind, op=op, status=status, call_id=call_id, meta=padded,
                    payload_len=n,
                )  # fmt: skip
        except BaseException:
            loan.discard()
            raise
        self._commit(loan)

    def _begin(
        self,
        kind: Kind,
        op: Op,
        status: Status,
        call_id: int,
        meta_raw: bytes,
        n: int,
        timeout: float | None,
    ) -> tuple[Loan, int]:
        """A loan for the frame, its header and meta written; the payload offset."""
        size = frame_size(len(meta_raw), n)
        try:
            publisher = self._conn.publisher
            wait = self._send_timeout_s if timeout is None else timeout
            loan = publisher.loan(size, timeout=wait)
        except (PeerDied, ChannelClosed) as exc:
            self._broken(exc)
            raise self._broken_error(f"the {self.name} peer is gone: {exc}") from exc
        try:
            offset = write_header(
                loan.view, kind=kind, op=op, status=status, call_id=call_id, meta=meta_raw,
                payload_len=n,
            )  # fmt: skip
        except BaseException:
            loan.discard()
            raise
        return loan, offset

    def _commit(self, loan: Loan) -> None:
        try:
            loan.commit()
        except (PeerDied, ChannelClosed) as exc:
            self._broken(exc)
            raise self._broken_error(f"the {self.name} peer is gone: {exc}") from exc

    def _receive_loop(self) -> None:
        subscriber = self._conn.subscriber
        while self._usable():
            try:
                sample = subscriber.receive(timeout=_POLL_S)
            except (PeerDied, ChannelClosed, IPCError) as exc:
                self._broken(exc)
                return
            if sample is None:
                continue
            try:
                frame = parse_frame(sample.view)
            except IPCError as exc:
                sample.release()
                _log.event("rpc.frame_refused", level=logging.WARNING, endpoint=self.name,
                           reason=str(exc))  # fmt: skip
                continue
            message = Message(frame, sample)
            if frame.kind is Kind.REPLY:
                self._complete(message)
            elif self._handler is None:
                message.release()
                _log.event("rpc.call_refused", level=logging.WARNING, endpoint=self.name,
                           op=frame.op.name)  # fmt: skip
            else:
                try:
                    self._handler(message)
                except Exception as exc:  # the handler must reply; a bug must not stop us
                    _log.event("rpc.handler_failed", level=logging.ERROR, endpoint=self.name,
                               op=frame.op.name, error=type(exc).__name__)  # fmt: skip
                    message.release()

    def _complete(self, message: Message) -> None:
        with self._lock:
            future = self._pending.pop(message.call_id, None)
        if future is None:  # the caller gave up (deadline) or the id is bogus
            message.release()
            return
        if message.status is not Status.OK:
            error = error_for(
                message.status,
                str(message.meta.get("message", "")),
                retryable=message.meta.get("retryable") is True,
            )
            message.release()
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)
            return
        try:
            future.set_result(message)
        except concurrent.futures.InvalidStateError:  # cancelled by its caller
            message.release()

    def _broken(self, exc: BaseException) -> None:
        with self._lock:
            if not self._usable():
                return
            self._is_broken = True
            self._reason = str(exc) or type(exc).__name__
        _log.event("rpc.broken", endpoint=self.name, error=type(exc).__name__)
        self._fail_pending(self._broken_error(f"the {self.name} peer is gone: {exc}"))
        if self._on_broken is not None:
            self._on_broken(exc)

    def _fail_pending(self, error: Exception) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)

    def __repr__(self) -> str:
        state = "broken" if self._is_broken else self.state.value
        return f"Endpoint(name={self.name!r}, state={state!r})"


def _release_result(future: concurrent.futures.Future[Message]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().release()
