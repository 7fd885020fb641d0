"""A runtime in this process behind the real host interfaces (no process, no shared memory).

:class:`InProcessRuntime` implements :class:`~sealserve.instance.RuntimeHandle` with the real
runtime server and :class:`~sealserve.runtime.SealedRuntime` on the in-process ipc backend, so
the HTTP host can be tested end to end without launching anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sealserve.ecall import Endpoint, Message, wire
from sealserve.errors import RuntimeUnavailable
from sealserve.instance import RuntimeGeneration, RuntimeStatus
from sealserve.ipc import ChannelOptions, Connection
from sealserve.runtime import RuntimeOptions, RuntimeServer, SealedRuntime
from tests.unit.runtime.keyservice import InProcessKeyService

__all__ = ["FakeProcess", "InProcessRuntime"]


class FakeProcess:
    """A :class:`~sealserve.attest.MeasuredProcess` that is this process (nothing launched)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.entry = "runtime"
        self.measurement = "00" * 32
        self.debug = False
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        return None

    def terminate(self) -> None:
        return None

    def kill(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class InProcessRuntime:
    """A :class:`~sealserve.instance.RuntimeHandle` over a runtime in this process."""

    def __init__(self, ks: InProcessKeyService, *, workers: int = 4, **options: Any) -> None:
        host_conn, rt_conn = Connection.create_inprocess_pair(
            request=ChannelOptions(arena_bytes=64 << 20),
            response=ChannelOptions(arena_bytes=64 << 20),
        )
        self.runtime = SealedRuntime(
            options=RuntimeOptions(workers=workers, **options),
            keys=ks.broker(cache=not options.get("baseline", False)),
            source=ks.source,
            clock=ks.clock,
        )
        self.server = RuntimeServer(self.runtime, workers=workers, clock=ks.clock)
        self.runtime_endpoint = Endpoint(rt_conn, name="runtime", handler=self.server.handle)
        self.server.attach(self.runtime_endpoint)
        self.runtime_endpoint.open()
        endpoint = Endpoint(host_conn, name="host").open()
        self.generation = RuntimeGeneration(1, FakeProcess(), endpoint, 0.25)
        self._status = RuntimeStatus.READY

    @property
    def status(self) -> RuntimeStatus:
        return self._status

    @property
    def health(self) -> str:
        return self._status.value

    @property
    def restarts(self) -> int:
        return 0

    def current(self, *, timeout: float | None) -> RuntimeGeneration:
        if self._status is not RuntimeStatus.READY:
            raise RuntimeUnavailable(f"the runtime is {self._status.value}")
        return self.generation

    def call(
        self,
        op: wire.Op,
        meta: Mapping[str, Any] | None = None,
        payload: bytes | bytearray | memoryview | None = None,
        *,
        timeout: float,
    ) -> Message:
        return self.current(timeout=timeout).endpoint.call(op, meta, payload, timeout=timeout)

    def describe(self) -> dict[str, Any]:
        return {"state": self._status.value, "generation": 1, "restarts": 0}

    def fail(self) -> None:
        """As if the runtime died and the supervisor gave up."""
        self._status = RuntimeStatus.FAILED

    def close(self) -> None:
        self.generation.endpoint.close()
        self.runtime_endpoint.close()
        self.server.close()
