"""The gateway's server: bound first (so port 0 works), served in this thread or another.

It runs :class:`~._http.HttpServer` on uvloop (when installed): inference on the lean path
(the body read straight into one buffer, no framework), everything else through the Starlette
application.  ``serve()`` blocks in the calling thread and stops cleanly on SIGINT or SIGTERM
(in the main thread): it stops accepting, lets requests in progress finish (up to
``graceful_s``), then runs the gateway's shutdown hook (which closes the platform and stops its
instances).  ``start()`` serves from a background thread (tests, embedding) and ``stop()``
ends it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, Final

from sealserve._log import get_logger
from sealserve._serving import base_url, bind_listener
from sealserve._tls import TlsFiles, server_context
from sealserve.errors import GatewayError
from sealserve.gateway._app import Gateway
from sealserve.gateway._http import HttpServer

__all__ = ["GatewayServer"]

_log = get_logger(__name__)
_START_TIMEOUT_S: Final = 60.0
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class GatewayServer:
    """One gateway listening on ``host:port`` (see the module docstring); HTTPS with ``tls``.

    ``log_level`` is the level of the HTTP server's own log lines (a failed handler).
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        host: str = "127.0.0.1",
        port: int = 8480,
        log_level: str = "WARNING",
        graceful_s: float = 30.0,
        tls: TlsFiles | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within [0, 65535], got {port!r}")
        if log_level.upper() not in _LEVELS:
            raise ValueError(f"log_level has value {log_level!r}; use one of {_LEVELS}")
        if not graceful_s >= 0:
            raise ValueError(f"graceful_s must be >= 0, got {graceful_s!r}")
        self.gateway = gateway
        try:
            self._sock = bind_listener(host, port, inheritable=False)
        except OSError as exc:
            raise GatewayError(str(exc)) from exc
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.host = str(bound_host)
        self.port = int(bound_port)
        self.url = base_url(self.host, self.port, tls=tls)
        try:
            self._tls = server_context(tls) if tls is not None else None
        except ValueError as exc:
            self._sock.close()
            raise GatewayError(str(exc)) from None
        self._graceful_s = graceful_s
        logging.getLogger("sealserve.gateway._http").setLevel(log_level.upper())
        self._http = HttpServer(
            app=gateway.app, routes=gateway.lean_routes(), limits=gateway.options.http
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_asked = False
        self.started = False
        self._thread: threading.Thread | None = None
        self._failure: list[BaseException] = []

    def serve(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`); ``on_ready`` runs once it listens."""
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._main(on_ready))
        finally:
            self._sock.close()
        if not self.started:
            raise GatewayError(f"the gateway did not start on {self.url}; see the log")
        _log.event("gateway.stopped", url=self.url)

    async def _main(self, on_ready: Callable[[], None] | None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        if self._stop_asked:
            return
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._stop.set)
        try:
            await self.gateway.startup()
            try:
                await self._http.start(self._sock, tls=self._tls)
                self.started = True
                if on_ready is not None:
                    on_ready()
                await self._stop.wait()
                self.gateway.drain()
                await self._http.stop(graceful_s=self._graceful_s)
            finally:
                await self.gateway.shutdown()
        finally:
            if in_main:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)

    def start(self) -> GatewayServer:
        """Serve from a background thread; return once it listens."""
        if self._thread is not None:
            raise GatewayError("the gateway server was started already")
        ready = threading.Event()

        def run() -> None:
            try:
                self.serve(on_ready=ready.set)
            except BaseException as exc:
                self._failure.append(exc)
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="gateway", daemon=True)
        self._thread.start()
        ready.wait(_START_TIMEOUT_S)
        if self._failure or not self.started:
            self.stop()
            raise GatewayError(f"the gateway did not start on {self.url}") from (
                self._failure[0] if self._failure else None
            )
        return self

    def stop(self, *, timeout: float = 90.0) -> None:
        """Stop serving (gracefully) and wait for the server thread."""
        self._stop_asked = True
        loop, event = self._loop, self._stop
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(event.set)
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._loop is None:
            self._sock.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
