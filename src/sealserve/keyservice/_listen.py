"""The listening socket of a KeyService, bound by the process itself or by its launcher.

One KeyService process binds its own (so ``--port 0`` works).  For several processes on one
port the launcher binds one socket per process, all on that port with ``SO_REUSEPORT``, and
hands each process its own: the kernel then spreads new connections evenly over them (by a
hash of the connection's addresses).  One socket shared by all would not: whichever process
wakes first accepts every connection waiting, so a client's few keep-alive connections would
all land on one process.
"""

from __future__ import annotations

import socket

__all__ = ["bind_listener"]


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port), inheritable, with the
    options the KeyService needs (TCP_NODELAY on accepted connections, a deep backlog).

    With ``reuse_port``, other sockets with ``reuse_port`` (of this user) may bind the same
    port, and the kernel balances connections over them."""
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
    sock.set_inheritable(True)
    return sock
