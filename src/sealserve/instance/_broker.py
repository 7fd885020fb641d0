"""The broker socket: how a host tells the platform that started it what it needs to know.

A platform that spawns an instance host may hand it one end of a ``SOCK_SEQPACKET`` socket
pair (``sealserve instance serve --broker-fd N``).  The host then sends on it, one datagram
each, a JSON object and at most one descriptor:

* ``{"event": "instance.ready", ...}`` — the ready line (docs/runtime.md), as soon as the host
  serves: the platform needs no ready file to poll;
* ``{"event": "runtime.link", "generation", "runtime_pid", "runtime_start_ms"}`` with one
  descriptor: each runtime generation's *data link* (see
  :class:`~sealserve.instance.RuntimeSupervisor`), on which the platform offers its own ipc
  connection to that runtime and sends requests straight to it.

Everything on it is public (ids, pids, timings, a socket); it carries no key and no payload.
The platform treats what it receives as it treats the host: untrusted (it checks the fields
and closes any descriptor it did not ask for).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["BrokerMessage", "HostBroker", "receive_broker_message"]

#: Largest datagram either side accepts.
_MAX_BYTES: Final = 64 * 1024


class BrokerMessage:
    """One received datagram: its JSON object and the descriptor it carried (or ``None``).

    The receiver owns ``fd``: take it with :meth:`take_socket` or it is closed by
    :meth:`close`.
    """

    __slots__ = ("doc", "fd")

    def __init__(self, doc: dict[str, Any], fd: int | None) -> None:
        self.doc = doc
        self.fd = fd

    @property
    def event(self) -> str:
        value = self.doc.get("event")
        return value if isinstance(value, str) else ""

    def take_socket(self) -> socket.socket | None:
        """The descriptor as a socket (now the caller's to close), if one came."""
        fd, self.fd = self.fd, None
        return None if fd is None else socket.socket(fileno=fd)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                socket.socket(fileno=fd).close()


def receive_broker_message(sock: socket.socket) -> BrokerMessage | None:
    """The next datagram on ``sock`` (blocking or not, as the socket is); ``None`` at EOF.

    ``ValueError`` for a datagram that is not one JSON object (its descriptors are closed).
    """
    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_BYTES, 1)
    if not data and not fds:
        return None
    if len(fds) > 1:  # recv_fds asked for one; a kernel may still hand more: refuse them
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.socket(fileno=fd).close()
        raise ValueError("a broker message carries at most one descriptor")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.socket(fileno=fd).close()
        raise ValueError("a broker message is not a JSON object") from None
    return BrokerMessage(doc, fds[0] if fds else None)


class HostBroker:
    """The host's end: sends events to the platform (thread-safe; errors are swallowed,
    since a platform that went away stops the host through its lifeline anyway)."""

    def __init__(self, sock: socket.socket) -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise ValueError("the broker socket must be a SOCK_SEQPACKET socket")
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, doc: Mapping[str, Any], *, fd: int | None = None) -> bool:
        """Send one event (and ``fd``, which stays the caller's); whether it went out."""
        data = json.dumps(dict(doc), separators=(",", ":")).encode("utf-8")
        if len(data) > _MAX_BYTES:
            raise ValueError(f"a broker message is {len(data)} bytes; at most {_MAX_BYTES}")
        with self._lock:
            try:
                socket.send_fds(self._sock, [data], [] if fd is None else [fd])
            except OSError:
                return False
        return True

    def close(self) -> None:
        with self._lock:
            self._sock.close()
