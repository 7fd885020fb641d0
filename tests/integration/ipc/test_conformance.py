"""The conformance suite on real shared memory: memfd segments handed over a Unix socket.

Each subscriber maps the segment from the descriptor it received (a second mapping, as in
another process); "killing" an end drops its socket without a goodbye, which is what the
survivor sees when a process dies.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from sealserve.ipc import (
    Channel,
    ChannelOptions,
    Connection,
    CopyEngine,
    Publisher,
    QoS,
    Scheduler,
    SocketLink,
    Subscriber,
    share_channel,
)
from tests.unit.ipc._conformance import SMALL, ConformanceSuite

pytestmark = pytest.mark.usefixtures("ipc_core")


class ShmBackend:
    """Ends over memfd segments handed over socketpairs (the opener runs on a thread)."""

    name = "shm"

    def __init__(self) -> None:
        self._channels: list[Channel] = []
        self._connections: list[Connection] = []
        self._pool = ThreadPoolExecutor(max_workers=1)

    def _subscriber(self, ch: Channel, qos: QoS | str) -> Subscriber:
        mine, theirs = socket.socketpair()
        opened = self._pool.submit(Connection.open, theirs, qos=qos)
        share_channel(ch, mine)
        conn = opened.result(timeout=10)
        self._connections.append(conn)
        return conn.subscriber

    def pair(
        self,
        options: ChannelOptions = SMALL,
        *,
        qos: QoS | str = QoS.LATENCY,
        scheduler: Scheduler | None = None,
        engines: list[CopyEngine] | None = None,
    ) -> tuple[Publisher, Subscriber]:
        ch = Channel.create(dataclasses.replace(options, memory="memfd"))
        self._channels.append(ch)
        pub = ch.publisher(qos=qos, scheduler=scheduler, engines=engines)
        return pub, self._subscriber(ch, qos)

    def fanout(self, n: int, options: ChannelOptions = SMALL) -> tuple[Publisher, list[Subscriber]]:
        ch = Channel.create(dataclasses.replace(options, memory="memfd"))
        self._channels.append(ch)
        pub = ch.publisher()
        return pub, [self._subscriber(ch, QoS.LATENCY) for _ in range(n)]

    def connections(
        self, request: ChannelOptions = SMALL, response: ChannelOptions = SMALL
    ) -> tuple[Connection, Connection]:
        a, b = socket.socketpair()
        opened = self._pool.submit(Connection.open, b)
        creator = Connection.create(
            a,
            request=dataclasses.replace(request, memory="memfd"),
            response=dataclasses.replace(response, memory="memfd"),
        )
        opener = opened.result(timeout=10)
        self._connections += [creator, opener]
        return creator, opener

    def kill(self, conn: Connection) -> None:
        assert isinstance(conn.link, SocketLink)
        conn.link.abort()

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        for ch in self._channels:
            ch.close()
        self._pool.shutdown()


class TestSharedMemory(ConformanceSuite):
    @pytest.fixture
    def backend(self) -> Iterator[ShmBackend]:
        made = ShmBackend()
        try:
            yield made
        finally:
            made.close()
