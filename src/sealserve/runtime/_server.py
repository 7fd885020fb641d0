"""The runtime's side of the ipc connection: ecalls in, ocalls out.

:class:`RuntimeServer` answers the host's calls with a :class:`SealedRuntime` on an executor
pool (onnxruntime releases the GIL, so requests really run at once), and gives the runtime its
two ways out, both through the host:

* :class:`HostModelSource` — the fetch ocall: the host writes the sealed model from its store
  into a loan of the channel, and the runtime unseals it from that shared memory;
* :class:`HostRelay` — the KeyService ocall: the host carries the HTTP exchange, which is
  end-to-end protected (attested keys, signed releases, HPKE-wrapped keys).

Ecall meta (JSON, no secrets)::

    stats   {}                                                   -> the runtime's stats
    load    {"model_id", "user_id", "timeout_s"}                 -> {"timings"}
    infer   {"model_id", "user_id", "request_id", "timeout_s"}   -> {"timings"}; payload:
            payload: the sealed input                               the sealed output
    evict   {"model_id"}                                         -> {"evicted"}
    prepare {"timeout_s"}                                        -> {"timings"}: the KeyService
                                                                    attested
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.ecall import Endpoint, Message, wire
from sealserve.ecall import timings as st
from sealserve.errors import DeadlineExceeded, KeyServiceError, ModelNotAvailable
from sealserve.runtime._core import SealedRuntime

__all__ = ["HostModelSource", "HostRelay", "RuntimeServer", "timeout_from_meta"]

_log = get_logger(__name__)
_MAX_TIMEOUT_S = 3600.0


def timeout_from_meta(meta: dict[str, Any]) -> float | None:
    """The ``timeout_s`` of a call's meta (``None`` if absent); ``ValueError`` if invalid."""
    value = meta.get("timeout_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"timeout_s must be a number, got {value!r}")
    if not 0 < value <= _MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be within (0, {_MAX_TIMEOUT_S}], got {value!r}")
    return float(value)


def _text(meta: dict[str, Any], name: str) -> str:
    value = meta.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


class _FetchedModel:
    __slots__ = ("_message",)

    def __init__(self, message: Message) -> None:
        self._message = message

    @property
    def view(self) -> memoryview:
        return self._message.payload

    @property
    def key_version(self) -> int:
        value = self._message.meta.get("key_version")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelNotAvailable("the host sent a model without its key version")
        return value

    def release(self) -> None:
        self._message.release()


class HostModelSource:
    """Fetches sealed models through the host (the fetch ocall)."""

    def __init__(self, endpoint: Endpoint, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._endpoint = endpoint
        self._clock = clock

    def fetch(self, model_id: str, *, deadline: float | None) -> _FetchedModel:
        timeout = None if deadline is None else max(0.001, deadline - self._clock.monotonic())
        message = self._endpoint.call(
            wire.Op.FETCH_MODEL, {"model_id": model_id}, b"", timeout=timeout
        )
        return _FetchedModel(message)


class HostRelay:
    """Carries KeyService exchanges through the host (the KeyService ocall)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def __call__(
        self, method: str, path: str, body: bytes, *, timeout: float | None
    ) -> tuple[int, bytes]:
        meta: dict[str, Any] = {"method": method, "path": path}
        if timeout is not None:
            meta["timeout_s"] = round(timeout, 6)
        try:
            with self._endpoint.call(wire.Op.KEYSERVICE, meta, body, timeout=timeout) as reply:
                status = reply.meta.get("status")
                if isinstance(status, bool) or not isinstance(status, int):
                    raise KeyServiceError("the host relayed a KeyService answer without a status")
                return status, bytes(reply.payload)
        except DeadlineExceeded:
            raise
        except KeyServiceError:
            raise
        except ValueError as exc:  # the host could not reach the KeyService
            raise KeyServiceError(f"the KeyService is unreachable: {exc}") from None


class RuntimeServer:
    """Serves the ecalls of its connections with ``runtime`` on ``workers`` threads.

    The host's connection (:meth:`attach`) carries ecalls and the runtime's ocalls; a data
    connection (a platform that sends requests straight to the runtime, bypassing the host's
    HTTP hop) carries ecalls only: each call is answered on the endpoint it came in on.
    Every connection is untrusted alike: what a call may do does not depend on where it
    came from.
    """

    def __init__(
        self, runtime: SealedRuntime, *, workers: int, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.runtime = runtime
        self._clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="runtime-worker"
        )
        self._endpoint: Endpoint | None = None
        self._workers = workers
        self._active = 0
        self._lock = threading.Lock()

    def attach(self, endpoint: Endpoint) -> None:
        """The host's endpoint (the default for :meth:`handle`)."""
        self._endpoint = endpoint

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.runtime.close()

    # -- dispatch (on the receiver thread: never block here) -----------------------------------

    def handle(self, message: Message, endpoint: Endpoint | None = None) -> None:
        """Take one call of ``endpoint`` (default: the host's); never blocks."""
        origin = endpoint if endpoint is not None else self._endpoint
        assert origin is not None
        if message.op is wire.Op.STATS:
            self._run(self._stats, message, origin)
        elif message.op in (wire.Op.LOAD, wire.Op.INFER, wire.Op.EVICT, wire.Op.PREPARE):
            received = time.perf_counter()
            with self._lock:
                busy = self._active >= self._workers
                self._active += 1
            if busy and message.op is wire.Op.INFER:  # it will queue: let the channel go now
                message.detach()
            self._pool.submit(self._run, self._work, message, origin, received)
        else:
            origin.reply_error(message, ValueError(f"{message.op.name.lower()} is not an ecall"))

    def _run(self, fn: Any, message: Message, origin: Endpoint, *args: Any) -> None:
        try:
            fn(message, origin, *args)
        except Exception as exc:
            message.release()
            level = (
                logging.INFO if isinstance(exc, ValueError | DeadlineExceeded) else logging.WARNING
            )
            _log.event("runtime.call_failed", level=level, op=message.op.name,
                       error=type(exc).__name__)  # fmt: skip
            origin.reply_error(message, exc)

    def _stats(self, message: Message, origin: Endpoint) -> None:
        message.release()
        origin.reply(message, self.runtime.stats())

    def _work(self, message: Message, origin: Endpoint, received: float) -> None:
        try:
            self._serve(message, origin, received)
        finally:
            with self._lock:
                self._active -= 1

    def _serve(self, message: Message, origin: Endpoint, received: float) -> None:
        meta = message.meta
        if message.op is wire.Op.EVICT:
            evicted = self.runtime.evict(_text(meta, "model_id"))
            message.release()
            origin.reply(message, {"evicted": evicted})
            return
        timeout = timeout_from_meta(meta)
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        if message.op is wire.Op.PREPARE:
            message.release()
            origin.reply(message, {"timings": self.runtime.prepare(deadline=deadline)})
            return
        if message.op is wire.Op.LOAD:
            message.release()
            timings = self.runtime.load(
                model_id=_text(meta, "model_id"), user_id=_text(meta, "user_id"), deadline=deadline
            )
            origin.reply(message, {"timings": timings})
            return
        output = self.runtime.infer(
            model_id=_text(meta, "model_id"),
            user_id=_text(meta, "user_id"),
            request_id=_text(meta, "request_id"),
            sealed_input=message.payload,
            deadline=deadline,
            input_consumed=message.release,
            detach=message.detach,
        )

        def reply_meta() -> dict[str, Any]:
            output.timings.add(st.RUNTIME, time.perf_counter() - received)
            return {"timings": output.timings.to_dict()}

        origin.reply(message, reply_meta, payload_len=output.size, writer=output.write)
