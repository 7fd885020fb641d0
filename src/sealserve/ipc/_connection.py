"""Connections: channels handed to another process over a Unix socket, and by path.

The usual shape is a duplex connection between an untrusted host and the sealed runtime it
launches: the host makes a ``socketpair``, passes one end to the child, and both sides call::

    host = Connection.create(sock, request=ChannelOptions(...), response=ChannelOptions(...))
    rt = Connection.open(sock)            # in the child, on the other end

after which ``host.publisher`` feeds ``rt.subscriber`` (requests) and ``rt.publisher`` feeds
``host.subscriber`` (responses).  The creator makes and sizes both segments.  The same socket
then carries only liveness: an orderly close says ``BYE``; a killed peer is EOF (and a pidfd
event), which the survivor reports as :class:`~sealserve.errors.PeerDied` instead of hanging.

Fan-out: a publisher process serves one channel to several subscriber processes with
:meth:`Listener.accept_subscriber` (or :func:`share_channel` on any connected socket); each
subscriber process calls :func:`connect` (or :meth:`Connection.open`) and gets a connection
with only a ``subscriber``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import struct
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.errors import IPCError, SegmentError
from sealserve.ipc._channel import Channel, ChannelOptions
from sealserve.ipc._engines import CopyEngine
from sealserve.ipc._handshake import (
    PUBLISH,
    SUBSCRIBE,
    Entry,
    receive_answer,
    receive_offer,
    send_answer,
    send_offer,
)
from sealserve.ipc._link import InProcessLink, Link, SocketLink
from sealserve.ipc._notify import QoS
from sealserve.ipc._publisher import Publisher
from sealserve.ipc._scheduler import Scheduler
from sealserve.ipc._segment import Segment
from sealserve.ipc._stats import ChannelStats
from sealserve.ipc._subscriber import Subscriber

__all__ = ["Connection", "ConnectionState", "Listener", "connect", "share_channel"]

_log = get_logger(__name__)
_NO_SLOT = 255


class ConnectionState(enum.Enum):
    OPENED = "opened"
    CLOSED = "closed"


class _Shared:
    """Channels shared by the two ends of an in-process pair; the last close unmaps."""

    def __init__(self, channels: list[Channel]) -> None:
        self.channels = channels
        self.users = 2
        self.lock = threading.Lock()

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            last = self.users == 0
        if last:
            for ch in self.channels:
                ch.close()


class Connection:
    """One process's end of a connection: an outbound ``publisher``, an inbound ``subscriber``.

    Either may be ``None`` (a fan-out subscriber has no publisher).  Close it (or use
    ``with``) to leave in an orderly way.
    """

    def __init__(
        self,
        *,
        name: str,
        publisher: Publisher | None,
        subscriber: Subscriber | None,
        channels: list[Channel],
        link: Link,
        shared: _Shared | None = None,
    ) -> None:
        self.name = name
        self._publisher = publisher
        self._subscriber = subscriber
        self._channels = channels
        self.link = link
        self._shared = shared
        self.state = ConnectionState.OPENED

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise IPCError(f"connection {self.name!r} has no outbound channel")
        return self._publisher

    @property
    def subscriber(self) -> Subscriber:
        if self._subscriber is None:
            raise IPCError(f"connection {self.name!r} has no inbound channel")
        return self._subscriber

    @property
    def peer_pid(self) -> int | None:
        return self.link.peer_pid

    def stats(self) -> dict[str, ChannelStats]:
        """The stats of this side's ends, by role (``publisher``, ``subscriber``).

        A role is present when the connection has it; the publisher's stats include the
        scheduler's cost model, thresholds and decisions.
        """
        if self.state is ConnectionState.CLOSED:
            raise IPCError(f"connection {self.name!r} is closed")
        out: dict[str, ChannelStats] = {}
        if self._publisher is not None:
            out["publisher"] = self._publisher.stats()
        if self._subscriber is not None:
            out["subscriber"] = self._subscriber.stats()
        return out

    # -- making connections --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        sock: socket.socket,
        *,
        request: ChannelOptions | None = None,
        response: ChannelOptions | None = None,
        qos: QoS | str = QoS.LATENCY,
        name: str = "connection",
        timeout: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        registry: CollectorRegistry | None = None,
        scheduler: Scheduler | None = None,
        engines: list[CopyEngine] | None = None,
    ) -> Connection:
        """Make both segments, hand them to the peer on ``sock``, and connect.

        ``request`` shapes the channel this side publishes on, ``response`` the one it
        receives on.  Raises :class:`SegmentError` if the peer refuses the segments.
        """
        req_opts = request or ChannelOptions()
        resp_opts = response or ChannelOptions()
        for label, opts in (("request", req_opts), ("response", resp_opts)):
            if opts.memory == "anonymous":
                raise ValueError(
                    f"{label}.memory is 'anonymous', which cannot be shared with another "
                    "process; use 'auto', 'memfd' or 'shm' (or create_inprocess_pair)"
                )
        _check_socket(sock)
        req = Channel.create(req_opts, name=f"{name}.request", clock=clock, registry=registry)
        resp: Channel | None = None
        try:
            resp = Channel.create(
                resp_opts, name=f"{name}.response", clock=clock, registry=registry
            )
            pub = req.publisher(
                qos=qos, require_subscriber=True, scheduler=scheduler, engines=engines
            )
            req_slot = pub.attach_slot()
            resp_slot = resp.reserve_slot()
            with _timeout(sock, timeout):
                send_offer(
                    sock,
                    [
                        Entry(SUBSCRIBE, req_slot, req.name, req_opts.trim_above),
                        Entry(PUBLISH, _NO_SLOT, resp.name, resp_opts.trim_above),
                    ],
                    [req.segment.fileno(), resp.segment.fileno()],
                )
                answer = receive_answer(sock)
            if answer.status != 0:
                raise SegmentError(f"the peer refused the segments: {answer.reason}")
            link = SocketLink(sock, peer_pid=answer.pid or None)
            pub.set_link(req_slot, link)
            sub = resp.subscriber(qos=qos, slot=resp_slot, link=link)
        except BaseException:
            req.close()
            if resp is not None:
                resp.close()
            raise
        _log.event("ipc.connection.created", name=name, peer_pid=answer.pid)
        return cls(name=name, publisher=pub, subscriber=sub, channels=[req, resp], link=link)

    @classmethod
    def open(
        cls,
        sock: socket.socket,
        *,
        qos: QoS | str = QoS.LATENCY,
        timeout: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        registry: CollectorRegistry | None = None,
        scheduler: Scheduler | None = None,
        engines: list[CopyEngine] | None = None,
    ) -> Connection:
        """Accept the segments a creator offers on ``sock`` and connect.

        Raises :class:`SegmentError` (after telling the peer why) for a segment of another
        version, a corrupt header, or a peer that is not a sealserve endpoint.
        """
        _check_socket(sock)
        with _timeout(sock, timeout):
            try:
                offer = receive_offer(sock)
            except SegmentError as exc:
                with contextlib.suppress(OSError, IPCError):
                    send_answer(sock, status=1, reason=str(exc))
                raise
            segments: list[Segment] = []
            fds = list(offer.fds)
            try:
                while fds:
                    segments.append(Segment.open_fd(fds.pop(0)))
            except BaseException as exc:
                for fd in fds:
                    os.close(fd)
                for seg in segments:
                    seg.close()
                reason = str(exc) if isinstance(exc, SegmentError) else "could not map a segment"
                with contextlib.suppress(OSError, IPCError):
                    send_answer(sock, status=1, reason=reason)
                raise
        link = SocketLink(sock, peer_pid=offer.pid or None)
        channels: list[Channel] = []
        pub: Publisher | None = None
        sub: Subscriber | None = None
        try:
            for entry, seg in zip(offer.entries, segments, strict=True):
                ch = Channel.from_segment(
                    seg,
                    name=entry.name,
                    trim_above=entry.trim_above,
                    clock=clock,
                    registry=registry,
                )
                channels.append(ch)
                if entry.role == SUBSCRIBE and sub is None:
                    sub = ch.subscriber(qos=qos, slot=entry.slot, link=link)
                elif entry.role == PUBLISH and pub is None:
                    pub = ch.publisher(
                        qos=qos, require_subscriber=True, scheduler=scheduler, engines=engines
                    )
                    pub.link_all(link)
                else:
                    raise SegmentError("the peer offered two channels in the same direction")
            with _timeout(sock, timeout):
                send_answer(sock)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, IPCError) else "could not attach to a channel"
            with contextlib.suppress(OSError, IPCError):
                send_answer(sock, status=1, reason=reason)
            for ch in channels:
                ch.close()
            for seg in segments[len(channels) :]:
                seg.close()
            raise
        name = offer.entries[0].name.rsplit(".", 1)[0]
        _log.event("ipc.connection.opened", name=name, peer_pid=offer.pid)
        return cls(name=name, publisher=pub, subscriber=sub, channels=channels, link=link)

    @classmethod
    def create_inprocess_pair(
        cls,
        *,
        request: ChannelOptions | None = None,
        response: ChannelOptions | None = None,
        qos: QoS | str = QoS.LATENCY,
        name: str = "connection",
        clock: Clock = SYSTEM_CLOCK,
        registry: CollectorRegistry | None = None,
    ) -> tuple[Connection, Connection]:
        """Both ends in this process (the in-process backend): ``(creator, opener)``.

        Same API and same ring code over anonymous memory: no shared-memory file, no socket.
        ``creator.link.kill()`` makes the creator vanish as a crashed process would.
        """
        req_opts = _anonymous(request or ChannelOptions())
        resp_opts = _anonymous(response or ChannelOptions())
        req = Channel.create(req_opts, name=f"{name}.request", clock=clock, registry=registry)
        resp = Channel.create(resp_opts, name=f"{name}.response", clock=clock, registry=registry)
        a_link, b_link = InProcessLink.pair()
        a_pub = req.publisher(qos=qos, require_subscriber=True)
        b_sub = req.subscriber(qos=qos, link=b_link)
        a_pub.link_all(a_link)
        a_slot = resp.reserve_slot()
        b_pub = resp.publisher(qos=qos, require_subscriber=True)
        a_sub = resp.subscriber(qos=qos, slot=a_slot, link=a_link)
        b_pub.link_all(b_link)
        shared = _Shared([req, resp])
        a = cls(
            name=name, publisher=a_pub, subscriber=a_sub, channels=[], link=a_link, shared=shared
        )
        b = cls(
            name=name, publisher=b_pub, subscriber=b_sub, channels=[], link=b_link, shared=shared
        )
        return a, b

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Leave in an orderly way: the peer sees :class:`ChannelClosed`, not a death."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        if self._publisher is not None:
            self._publisher.close()
        if self._subscriber is not None:
            self._subscriber.close()
        self.link.close()
        for ch in self._channels:
            ch.close()
        if self._shared is not None:
            self._shared.leave()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection(name={self.name!r}, state={self.state.value!r})"


def share_channel(channel: Channel, sock: socket.socket, *, timeout: float = 10.0) -> int:
    """Hand ``channel`` to a subscriber process on ``sock``; returns its slot.

    The channel's publisher must live in this process: it reserves the slot and watches the
    subscriber through ``sock`` (reclaiming its slots if it dies).
    """
    pub = channel._publisher
    if pub is None:
        raise IPCError(f"channel {channel.name!r} has no publisher in this process to share it")
    _check_socket(sock)
    slot = pub.attach_slot()
    try:
        with _timeout(sock, timeout):
            send_offer(
                sock,
                [Entry(SUBSCRIBE, slot, channel.name, channel.trim_above)],
                [channel.segment.fileno()],
            )
            answer = receive_answer(sock)
        if answer.status != 0:
            raise SegmentError(f"the peer refused the segment: {answer.reason}")
    except BaseException:
        pub.detach_slot(slot)
        sock.close()
        raise
    pub.set_link(slot, SocketLink(sock, peer_pid=answer.pid or None), owned=True)
    return slot


class Listener:
    """A Unix socket at ``path`` (mode 0600) that hands out connections or a channel."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock: socket.socket | None = sock
        self.path = path

    @classmethod
    def bind(cls, path: str | os.PathLike[str], *, backlog: int = 16) -> Listener:
        target = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.fchmod(sock.fileno(), 0o600)  # Linux gives the socket file this mode at bind
            sock.bind(target)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise IPCError(f"could not listen on {target!r}: {exc}") from exc
        return cls(sock, target)

    def accept(self, *, timeout: float | None = None) -> socket.socket:
        """The next connected socket from a process of this user (others are refused)."""
        if self._sock is None:
            raise IPCError(f"listener on {self.path!r} is closed")
        self._sock.settimeout(timeout)
        while True:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError as exc:
                raise IPCError(f"no peer connected to {self.path!r} within {timeout}s") from exc
            _, uid, _ = _peer_credentials(conn)
            if uid == os.getuid():
                conn.settimeout(None)
                return conn
            _log.event("ipc.listener.refused", path=self.path, uid=uid)
            conn.close()

    def accept_connection(
        self,
        *,
        request: ChannelOptions | None = None,
        response: ChannelOptions | None = None,
        qos: QoS | str = QoS.LATENCY,
        name: str = "connection",
        timeout: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> Connection:
        """Accept one peer and create a duplex connection with it."""
        sock = self.accept(timeout=timeout)
        try:
            return Connection.create(
                sock, request=request, response=response, qos=qos, name=name, registry=registry
            )
        except BaseException:
            sock.close()
            raise

    def accept_subscriber(self, channel: Channel, *, timeout: float | None = None) -> int:
        """Accept one peer and hand it ``channel`` as a subscriber; returns its slot."""
        return share_channel(channel, self.accept(timeout=timeout))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Listener(path={self.path!r}, state={'closed' if self._sock is None else 'open'!r})"


def connect(
    path: str | os.PathLike[str],
    *,
    qos: QoS | str = QoS.LATENCY,
    timeout: float = 10.0,
    registry: CollectorRegistry | None = None,
) -> Connection:
    """Connect to a :class:`Listener` and open whatever it offers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        return Connection.open(sock, qos=qos, timeout=timeout, registry=registry)
    except OSError as exc:
        sock.close()
        raise IPCError(f"could not connect to {os.fspath(path)!r}: {exc}") from exc
    except BaseException:
        sock.close()
        raise


def _anonymous(opts: ChannelOptions) -> ChannelOptions:
    return ChannelOptions(
        capacity=opts.capacity,
        arena_bytes=opts.arena_bytes,
        max_subscribers=opts.max_subscribers,
        memory="anonymous",
        trim_above=opts.trim_above,
    )


def _check_socket(sock: socket.socket) -> None:
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, got {type(sock).__name__}")
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ValueError("sock must be a connected AF_UNIX SOCK_STREAM socket")


@contextlib.contextmanager
def _timeout(sock: socket.socket, seconds: float | None) -> Iterator[None]:
    before = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(before)


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    fmt = struct.Struct("3i")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, fmt.size)
    pid, uid, gid = fmt.unpack(raw)
    return pid, uid, gid
