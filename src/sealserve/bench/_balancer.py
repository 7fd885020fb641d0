"""A TCP load balancer for the fault benchmark: a stable address in front of replicas.

A deployment puts a load balancer in front of its KeyService replicas and its gateway; the
fault benchmark needs the same, so that a replica or a gateway can die and come back on another
port while clients keep one URL.  :class:`TcpBalancer` listens on 127.0.0.1 (port 0), sends
each new connection to the next backend in turn and, when a backend refuses, to the one after
it (each once); with no backend it closes the connection (the client sees a reset and retries).
It can hold every new connection for ``delay_s`` first: a slow KeyService, as seen from its
clients.  It carries bytes only (TLS would pass through unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Sequence
from typing import Final

__all__ = ["TcpBalancer"]

_CONNECT_TIMEOUT_S: Final = 5.0
_CHUNK: Final = 1 << 16


class TcpBalancer:
    """Round-robin TCP forwarding to ``backends`` (``host:port``), on its own event loop thread."""

    def __init__(self, backends: Sequence[str] = (), *, name: str = "balancer") -> None:
        self.name = name
        self._backends: list[tuple[str, int]] = [_split(b) for b in backends]
        self._turn = itertools.count()
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_backends(self, backends: Sequence[str]) -> None:
        self._backends = [_split(b) for b in backends]  # one assignment: atomic for the loop

    def start(self) -> TcpBalancer:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"the {self.name} did not start")
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            backends = list(self._backends)
            start = next(self._turn)
            for i in range(len(backends)):
                host, port = backends[(start + i) % len(backends)]
                try:
                    up_reader, upstream = await asyncio.wait_for(
                        asyncio.open_connection(host, port), _CONNECT_TIMEOUT_S
                    )
                    break
                except (OSError, TimeoutError):
                    continue
            if upstream is None:
                self.refused += 1
                return
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    def close(self) -> None:
        if self._thread is None:
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                with contextlib.suppress(Exception):
                    await self._server.wait_closed()

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> TcpBalancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


def _split(address: str) -> tuple[str, int]:
    text = address.removeprefix("http://").rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a backend is host:port, got {address!r}")
    return host, int(port)
