"""The data link: the platform's own ipc connection to one runtime, bypassing the host's HTTP.

A host started with a broker socket hands the platform, for each runtime generation, one end
of a socket pair whose other end the runtime holds (docs/runtime.md, "The data link").  The
platform offers an ipc connection on it (it creates and sizes both segments, as the host does
for its own) and then sends ``INFER`` (and ``LOAD``, ``EVICT``) as frames in shared memory::

    gateway ──(loan: sealed input)──▶ runtime ──(loan: sealed output)──▶ gateway

instead of HTTP to the host and ipc from there: one process and two copies of the body fewer
per request.  The host still supervises the runtime, answers its ocalls (model fetches, the
KeyService relay) and serves its HTTP surface; calls fall back to it whenever there is no live
link (a runtime restarting, a host without a broker).

Nothing changes in what anyone can see: the channels carry the same envelopes, and the
runtime treats the link as it treats the host (untrusted).  The gateway process is as
untrusted as the host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry

from sealserve._log import get_logger
from sealserve._resource import ResourceState
from sealserve.ecall import Endpoint, Message, timings, wire
from sealserve.errors import BackpressureTimeout, DeadlineExceeded, RuntimeUnavailable
from sealserve.ipc import ChannelOptions, Connection, QoS
from sealserve.platform._backend import InferOutcome

__all__ = ["RuntimeLink"]

_log = get_logger(__name__)
_MIB: Final = 1 << 20
#: Messages this large give their pages back once reclaimed (large inputs, not the usual).
_TRIM: Final = 16 * _MIB
_CONNECT_TIMEOUT_S: Final = 10.0
#: Stages a runtime's first answer carries for the cold start that preceded it.
_COLD: Final = (timings.SANDBOX_START, timings.RUNTIME_START)


class RuntimeLink:
    """An open data link to one runtime generation (see the module docstring).

    Made with :meth:`open` (blocking: the ipc handshake) from the socket the host sent.
    ``cold_start`` holds the stages (ms) of the start that made this runtime; the first answer
    that goes through the link carries them, as the host's first answer would.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        generation: int,
        runtime_pid: int | None,
        cold_start: Mapping[str, float],
    ) -> None:
        self._endpoint = endpoint
        self.generation = generation
        self.runtime_pid = runtime_pid
        self._cold: dict[str, float] | None = dict(cold_start) or None

    @classmethod
    def open(
        cls,
        sock: socket.socket,
        *,
        generation: int,
        runtime_pid: int | None,
        max_body_bytes: int,
        name: str,
        cold_start: Mapping[str, float] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> RuntimeLink:
        """Offer the connection on ``sock`` (which it takes) and start receiving."""
        try:
            connection = Connection.create(
                sock,
                # Room for several inputs of the largest size at once; committed lazily.
                request=ChannelOptions(
                    arena_bytes=max(64 * _MIB, 4 * max_body_bytes), trim_above=_TRIM
                ),
                response=ChannelOptions(arena_bytes=256 * _MIB, trim_above=_TRIM),
                name=name,
                timeout=_CONNECT_TIMEOUT_S,
                registry=registry if registry is not None else CollectorRegistry(),
                qos=QoS.EFFICIENCY,  # replies take milliseconds: spinning only steals cores
            )
        except BaseException:
            sock.close()
            raise
        endpoint = Endpoint(connection, name=name, broken_error=RuntimeUnavailable)
        endpoint.open()
        return cls(
            endpoint, generation=generation, runtime_pid=runtime_pid, cold_start=cold_start or {}
        )

    @property
    def usable(self) -> bool:
        return self._endpoint.state is ResourceState.OPENED and not self._endpoint.broken

    def close(self) -> None:
        self._endpoint.close()

    # -- calls (on the event loop) -------------------------------------------------------------

    async def _call(
        self,
        op: wire.Op,
        meta: Mapping[str, Any],
        payload: bytes | bytearray | memoryview | None,
        timeout: float,
    ) -> Message:
        endpoint = self._endpoint
        started = time.monotonic()
        try:  # at once when there is room (the usual case), else from a thread
            future = endpoint.call_async(op, meta, payload, send_timeout=0)
        except BackpressureTimeout:
            future = await asyncio.to_thread(
                endpoint.call_async, op, meta, payload, send_timeout=timeout
            )
        # The wait for room counts against the same deadline as the wait for the reply.
        remaining = max(0.001, timeout - (time.monotonic() - started))
        return await _reply(endpoint, future, remaining)

    def add_cold_stage(self, stage: str, ms: float) -> None:
        """Add a stage of the start that made this runtime (before its first answer)."""
        if self._cold is None:
            self._cold = {}
        self._cold.setdefault(stage, ms)

    def _cold_stages(self) -> dict[str, float]:
        cold, self._cold = self._cold, None
        return cold or {}

    async def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray | memoryview,
        deadline_ms: int,
    ) -> InferOutcome:
        started = time.perf_counter()
        timeout = deadline_ms / 1000.0 - time.time()
        if timeout <= 0:
            raise DeadlineExceeded("the request's deadline passed before it was sent")
        meta = {
            "model_id": model_id,
            "user_id": user_id,
            "request_id": request_id,
            "timeout_s": round(min(timeout, 3600.0), 6),
        }
        reply = await self._call(wire.Op.INFER, meta, sealed_input, timeout)
        try:
            output = bytes(reply.payload)
            stages = _stages(reply.meta)
        finally:
            reply.release()
        stages[timings.TOTAL] = round((time.perf_counter() - started) * 1000, 3)
        stages.update(self._cold_stages())
        return InferOutcome(output, stages)

    async def load(self, *, model_id: str, user_id: str, timeout_s: float) -> dict[str, float]:
        meta = {"model_id": model_id, "user_id": user_id, "timeout_s": round(timeout_s, 6)}
        reply = await self._call(wire.Op.LOAD, meta, None, timeout_s)
        stages = _stages(reply.meta)
        reply.release()
        stages.update(self._cold_stages())
        return stages

    async def evict(self, *, model_id: str, timeout_s: float = 30.0) -> bool:
        reply = await self._call(wire.Op.EVICT, {"model_id": model_id}, None, timeout_s)
        evicted = reply.meta.get("evicted") is True
        reply.release()
        return evicted

    def __repr__(self) -> str:
        return f"RuntimeLink(generation={self.generation}, runtime_pid={self.runtime_pid})"


async def _reply(
    endpoint: Endpoint, future: concurrent.futures.Future[Message], timeout: float
) -> Message:
    delivered = False
    try:
        message = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        delivered = True
        return message
    except TimeoutError:
        raise DeadlineExceeded(
            f"the runtime did not answer within the deadline ({timeout:.3f}s)"
        ) from None
    finally:
        if not delivered:  # a deadline, a cancellation: the reply is released on arrival
            endpoint.abandon(future)


def _stages(meta: Mapping[str, Any]) -> dict[str, float]:
    raw = meta.get("timings")
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if k in timings.STAGES and isinstance(v, int | float) and not isinstance(v, bool)
    }
