"""The gateway on uvicorn: bound first (so port 0 works), served in this thread or another.

``serve()`` blocks in the calling thread and stops cleanly on SIGINT or SIGTERM (in the main
thread): uvicorn stops accepting, lets in-flight requests finish, then the app's shutdown hook
closes the platform (which stops its instances).  ``start()`` serves from a background thread
(tests, embedding) and ``stop()`` ends it the same way.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Final

import uvicorn

from sealserve._log import get_logger
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
        self._sock = _bind(host, port)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.host = str(bound_host)
        self.port = int(bound_port)
        self.url = f"http://{_url_host(self.host)}:{self.port}"
        self._server = _Server(
            uvicorn.Config(
                gateway.app,
                log_config=None,
                access_log=False,
                log_level=log_level.lower(),
                http="auto",
                loop="auto",
                lifespan="on",
                timeout_keep_alive=30,
                timeout_graceful_shutdown=int(graceful_s),
                server_header=False,
                date_header=False,
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


class _Server(uvicorn.Server):
    on_ready: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured SIGINT/SIGTERM after its graceful shutdown; a stop we
        # were asked for is a clean exit.
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
