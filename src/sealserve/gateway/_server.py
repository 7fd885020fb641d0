"""The gateway on uvicorn: bound first (so port 0 works), served in this thread or another.

``serve()`` blocks in the calling thread and stops cleanly on SIGINT or SIGTERM (in the main
thread): uvicorn stops accepting, lets in-flight requests finish, then the app's shutdown hook
closes the platform (which stops its instances).  ``start()`` serves from a background thread
(tests, embedding) and ``stop()`` ends it the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from sealserve._log import get_logger
from sealserve._serving import ReadyServer, bind_listener, server_config, url_host
from sealserve.errors import GatewayError
from sealserve.gateway._app import Gateway

__all__ = ["GatewayServer"]

_log = get_logger(__name__)
_START_TIMEOUT_S: Final = 60.0


class GatewayServer:
    """One gateway listening on ``host:port`` (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        host: str = "127.0.0.1",
        port: int = 8480,
        log_level: str = "WARNING",
        graceful_s: float = 30.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within [0, 65535], got {port!r}")
        self.gateway = gateway
        try:
            self._sock = bind_listener(host, port, inheritable=False)
        except OSError as exc:
            raise GatewayError(str(exc)) from exc
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.host = str(bound_host)
        self.port = int(bound_port)
        self.url = f"http://{url_host(self.host)}:{self.port}"
        self._server = ReadyServer(
            server_config(
                gateway.app,
                log_level=log_level,
                lifespan="on",
                graceful_s=int(graceful_s),
                limit_concurrency=gateway.options.max_queued + 64,
            )
        )
        self._thread: threading.Thread | None = None
        self._failure: list[BaseException] = []

    def serve(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`); ``on_ready`` runs once it listens."""
        self._server.on_ready = on_ready
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()
        if not self._server.started:
            raise GatewayError(f"the gateway did not start on {self.url}; see the log")
        _log.event("gateway.stopped", url=self.url)

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
        if self._failure or not self._server.started:
            self.stop()
            raise GatewayError(f"the gateway did not start on {self.url}") from (
                self._failure[0] if self._failure else None
            )
        return self

    def stop(self, *, timeout: float = 90.0) -> None:
        """Stop serving (gracefully) and wait for the server thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._sock.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
