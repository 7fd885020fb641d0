"""What the KeyService, the instance host and the gateway share to serve HTTP with uvicorn.

Each binds its listening socket first (so port 0 works), builds a :func:`server_config`, and
runs a :class:`ReadyServer`, which calls ``on_ready`` once the socket accepts connections and
treats a stop on SIGINT or SIGTERM as a clean exit.  Given TLS files (:class:`~._tls.TlsFiles`)
the server speaks HTTPS, and :func:`base_url` says so.

For several processes on one port (the KeyService's launcher) one socket is bound per
process, all on that port with ``reuse_port``, and each process gets its own: the kernel then
spreads new connections evenly over them (by a hash of the connection's addresses).  One
socket shared by all would not: whichever process wakes first accepts every connection
waiting, so a client's few keep-alive connections would all land on one process.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

import uvicorn

from sealserve._tls import TlsFiles

__all__ = ["ReadyServer", "base_url", "bind_listener", "server_config", "url_host"]


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, inheritable: bool = True
) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port) with the options a
    server needs (TCP_NODELAY on accepted connections, a deep backlog); ``OSError`` saying
    which address when it cannot bind.

    With ``reuse_port``, other sockets with ``reuse_port`` (of this user) may bind the same
    port, and the kernel balances connections over them.  ``inheritable``: a process this
    one starts may be handed the socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and accepted sockets inherit it; without it Nagle and delayed ACKs add ~40 ms a request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    if inheritable:
        sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    """``host`` as it stands in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def base_url(host: str, port: int, *, tls: TlsFiles | None = None) -> str:
    """``http(s)://host:port`` of a server listening there (HTTPS with ``tls``)."""
    return f"{'https' if tls is not None else 'http'}://{url_host(host)}:{port}"


def server_config(
    app: Any,
    *,
    log_level: str,
    lifespan: Literal["on", "off"],
    graceful_s: int,
    limit_concurrency: int | None = None,
    tls: TlsFiles | None = None,
) -> uvicorn.Config:
    """uvicorn's settings for our servers: our logging only, no access log, no Server or
    Date header, keep-alive 30 s, httptools and uvloop when installed; HTTPS with ``tls``."""
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        log_level=log_level.lower(),
        http="auto",  # httptools when installed, else h11
        loop="auto",  # uvloop when installed, else asyncio
        lifespan=lifespan,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=graceful_s,
        server_header=False,
        date_header=False,
        limit_concurrency=limit_concurrency,
        ssl_certfile=None if tls is None else str(tls.cert),
        ssl_keyfile=None if tls is None else str(tls.key),
    )


class ReadyServer(uvicorn.Server):
    """uvicorn's server that calls ``on_ready`` (a function or a coroutine function) once it
    listens, and exits cleanly when stopped by SIGINT or SIGTERM."""

    on_ready: Callable[[], Awaitable[None] | None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured SIGINT/SIGTERM after its graceful shutdown, so the
        # process would die of the signal; a stop we were asked for is a clean exit.
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            result = self.on_ready()
            if inspect.isawaitable(result):
                await result
