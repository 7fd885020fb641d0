"""The conformance suite on the in-process backend: the same ring over anonymous memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from sealserve.ipc import (
    Channel,
    ChannelOptions,
    Connection,
    CopyEngine,
    InProcessLink,
    Publisher,
    QoS,
    Scheduler,
    Subscriber,
)
from tests.unit.ipc._conformance import SMALL, ConformanceSuite

pytestmark = pytest.mark.usefixtures("ipc_core")


class InProcessBackend:
    """Ends in this process over anonymous memory; ``kill`` drops a link without a word."""

    name = "inprocess"

    def __init__(self) -> None:
        self._channels: list[Channel] = []
        self._connections: list[Connection] = []

    def _channel(self, options: ChannelOptions) -> Channel:
        ch = Channel.create(dataclasses.replace(options, memory="anonymous"))
        self._channels.append(ch)
        return ch

    def pair(
        self,
        options: ChannelOptions = SMALL,
        *,
        qos: QoS | str = QoS.LATENCY,
        scheduler: Scheduler | None = None,
        engines: list[CopyEngine] | None = None,
    ) -> tuple[Publisher, Subscriber]:
        ch = self._channel(options)
        pub = ch.publisher(qos=qos, scheduler=scheduler, engines=engines)
        return pub, ch.subscriber(qos=qos)

    def fanout(self, n: int, options: ChannelOptions = SMALL) -> tuple[Publisher, list[Subscriber]]:
        ch = self._channel(options)
        pub = ch.publisher()
        return pub, [ch.subscriber() for _ in range(n)]

    def connections(
        self, request: ChannelOptions = SMALL, response: ChannelOptions = SMALL
    ) -> tuple[Connection, Connection]:
        a, b = Connection.create_inprocess_pair(request=request, response=response)
        self._connections += [a, b]
        return a, b

    def kill(self, conn: Connection) -> None:
        assert isinstance(conn.link, InProcessLink)
        conn.link.kill()

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        for ch in self._channels:
            ch.close()


class TestInProcess(ConformanceSuite):
    @pytest.fixture
    def backend(self) -> Iterator[InProcessBackend]:
        made = InProcessBackend()
        try:
            yield made
        finally:
            made.close()
