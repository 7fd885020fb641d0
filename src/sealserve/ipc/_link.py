"""Links: how one end of a channel learns that the other end closed or died.

The shared control words say when a peer *closed* (it writes its state on the way out); a
peer that was killed writes nothing, so each end also holds a link to its peer process:

``SocketLink``     the Unix socket the segments were handed over on.  A closing peer sends
                   ``BYE`` and then closes; a killed one just vanishes, which reads as EOF.
                   Where the peer's pid is known a pidfd is polled as well (it fires even if
                   the socket was inherited by a child that lives on).
``InProcessLink``  both ends in one process (the in-process backend); ``kill()`` makes one
                   end vanish without a word, as a crash would.

``poll()`` never blocks; the wait loops call it between their blocking slices.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import threading
from typing import Protocol, runtime_checkable

from sealserve.ipc import _sys

__all__ = ["InProcessLink", "Link", "PeerState", "SocketLink"]

_BYE = b"BYE\n"


class PeerState(enum.Enum):
    ALIVE = "alive"
    CLOSED = "closed"  # left in an orderly way
    DIED = "died"  # vanished without a word


@runtime_checkable
class Link(Protocol):
    """One end's view of its peer."""

    @property
    def peer_pid(self) -> int | None: ...

    def poll(self) -> PeerState:
        """The peer's state now; never blocks."""
        ...

    def close(self) -> None:
        """Tell the peer we leave in an orderly way, and let go of the link."""
        ...


class SocketLink:
    """A link over the connected Unix socket the handshake used."""

    def __init__(self, sock: socket.socket, *, peer_pid: int | None = None) -> None:
        self._sock: socket.socket | None = sock
        self._peer_pid = peer_pid
        self._pidfd: int | None = None
        if peer_pid is not None and peer_pid != os.getpid():
            self._pidfd = _sys.pidfd_open(peer_pid)
        self._state = PeerState.ALIVE
        self._lock = threading.Lock()

    @property
    def peer_pid(self) -> int | None:
        return self._peer_pid

    def poll(self) -> PeerState:
        with self._lock:
            if self._state is not PeerState.ALIVE or self._sock is None:
                return self._state
            fds = [self._sock.fileno()]
            if self._pidfd is not None:
                fds.append(self._pidfd)
            ready = _sys.poll_readable(fds)
            if not ready:
                return self._state
            if self._sock.fileno() in ready:
                self._read_socket()
            if self._state is PeerState.ALIVE and self._pidfd is not None and self._pidfd in ready:
                # The process is gone; a BYE it sent before exiting may still be unread.
                self._read_socket()
                if self._state is PeerState.ALIVE:
                    self._state = PeerState.DIED
            return self._state

    def _read_socket(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(256, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._state = PeerState.DIED
            return
        if _BYE in data:
            self._state = PeerState.CLOSED
        elif not data:
            self._state = PeerState.DIED

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            pidfd, self._pidfd = self._pidfd, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(_BYE)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if pidfd is not None:
            os.close(pidfd)

    def abort(self) -> None:
        """Drop the link without a word (the peer sees what a crash looks like)."""
        with self._lock:
            sock, self._sock = self._sock, None
            pidfd, self._pidfd = self._pidfd, None
        if sock is not None:
            sock.close()
        if pidfd is not None:
            os.close(pidfd)

    def __repr__(self) -> str:
        return f"SocketLink(peer_pid={self._peer_pid!r}, state={self._state.value!r})"


class _Pair:
    __slots__ = ("lock", "states")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states = [PeerState.ALIVE, PeerState.ALIVE]


class InProcessLink:
    """One end of a link between two ends in the same process."""

    def __init__(self, pair: _Pair, side: int) -> None:
        self._pair = pair
        self._side = side

    @classmethod
    def pair(cls) -> tuple[InProcessLink, InProcessLink]:
        shared = _Pair()
        return cls(shared, 0), cls(shared, 1)

    @property
    def peer_pid(self) -> int | None:
        return os.getpid()

    def poll(self) -> PeerState:
        with self._pair.lock:
            return self._pair.states[1 - self._side]

    def close(self) -> None:
        with self._pair.lock:
            if self._pair.states[self._side] is PeerState.ALIVE:
                self._pair.states[self._side] = PeerState.CLOSED

    def kill(self) -> None:
        """Vanish without a word, as a crashed process would."""
        with self._pair.lock:
            self._pair.states[self._side] = PeerState.DIED

    def __repr__(self) -> str:
        return f"InProcessLink(side={self._side}, peer={self.poll().value!r})"
