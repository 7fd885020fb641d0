"""The handshake that hands channel segments to a peer over a connected Unix socket.

One message each way, both length-prefixed (``u32``), all integers little-endian::

    offer   (creator -> opener, with the segment descriptors attached by SCM_RIGHTS)
        magic "SEALHSK1", version u32, pid u32, count u32,
        then per segment: role u8 (0: the opener subscribes, 1: the opener publishes),
                          slot u8 (the subscriber slot reserved for the opener, or 255),
                          name length u16, trim_above u64 (0: never), name (UTF-8)
    answer  (opener -> creator)
        magic "SEALHSK1", version u32, pid u32, status u32 (0: accepted),
        then the reason (UTF-8) when refused

The opener validates everything it maps (magic, layout version, header CRC, size, seals,
mode) and answers with the reason when it refuses, so both sides raise the same
:class:`~sealserve.errors.SegmentError`.  The pids let each side watch the other's process
(pidfd) in addition to the socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct

from sealserve.errors import ChannelClosed, IPCError, SegmentError

__all__ = [
    "PROTOCOL_VERSION",
    "PUBLISH",
    "SUBSCRIBE",
    "Answer",
    "Entry",
    "Offer",
    "receive_answer",
    "receive_offer",
    "send_answer",
    "send_offer",
]

PROTOCOL_VERSION = 1
_MAGIC = b"SEALHSK1"
_HEAD = struct.Struct("<8sIII")
_ENTRY = struct.Struct("<BBHQ")
_LEN = struct.Struct("<I")
_MAX_MESSAGE = 64 << 10
_MAX_SEGMENTS = 8
SUBSCRIBE = 0
PUBLISH = 1


@dataclasses.dataclass(frozen=True)
class Entry:
    role: int  # SUBSCRIBE or PUBLISH, from the opener's point of view
    slot: int  # reserved subscriber slot, or 255
    name: str
    trim_above: int | None


@dataclasses.dataclass(frozen=True)
class Offer:
    version: int
    pid: int
    entries: list[Entry]
    fds: list[int]


@dataclasses.dataclass(frozen=True)
class Answer:
    version: int
    pid: int
    status: int
    reason: str


def send_offer(sock: socket.socket, entries: list[Entry], fds: list[int]) -> None:
    if len(entries) != len(fds) or not 0 < len(fds) <= _MAX_SEGMENTS:
        raise ValueError("one descriptor per entry, 1 to 8 of them")
    body = bytearray(_HEAD.pack(_MAGIC, PROTOCOL_VERSION, os.getpid(), len(entries)))
    for e in entries:
        name = e.name.encode()
        body += _ENTRY.pack(e.role, e.slot, len(name), e.trim_above or 0) + name
    _send(sock, bytes(body), fds)


def receive_offer(sock: socket.socket) -> Offer:
    """Read an offer; the caller owns (and must close) the returned descriptors."""
    body, fds = _receive(sock, _MAX_SEGMENTS)
    try:
        _, version, pid, count = _unpack_head(body)
        if version != PROTOCOL_VERSION:
            raise SegmentError(
                f"peer speaks handshake version {version}, this sealserve speaks "
                f"{PROTOCOL_VERSION}; run the same sealserve release on both sides"
            )
        if count != len(fds) or not 0 < count <= _MAX_SEGMENTS:
            raise SegmentError(f"peer offered {count} segments but sent {len(fds)} descriptors")
        entries: list[Entry] = []
        at = _HEAD.size
        for _ in range(count):
            if at + _ENTRY.size > len(body):
                raise SegmentError("handshake offer is truncated")
            role, slot, name_len, trim = _ENTRY.unpack_from(body, at)
            at += _ENTRY.size
            name = body[at : at + name_len].decode("utf-8", "replace")
            at += name_len
            if role not in (SUBSCRIBE, PUBLISH):
                raise SegmentError(f"handshake offer has an unknown role {role}")
            entries.append(Entry(role=role, slot=slot, name=name, trim_above=trim or None))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Offer(version=version, pid=pid, entries=entries, fds=fds)


def send_answer(sock: socket.socket, *, status: int = 0, reason: str = "") -> None:
    body = _HEAD.pack(_MAGIC, PROTOCOL_VERSION, os.getpid(), status) + reason.encode()[:4000]
    _send(sock, body, [])


def receive_answer(sock: socket.socket) -> Answer:
    body, fds = _receive(sock, 0)
    for fd in fds:  # pragma: no cover - a peer that attaches descriptors to an answer
        os.close(fd)
    _, version, pid, status = _unpack_head(body)
    reason = body[_HEAD.size :].decode("utf-8", "replace")
    return Answer(version=version, pid=pid, status=status, reason=reason)


def _unpack_head(body: bytes) -> tuple[bytes, int, int, int]:
    if len(body) < _HEAD.size:
        raise SegmentError("handshake message is truncated")
    magic, version, pid, count = _HEAD.unpack_from(body)
    if magic != _MAGIC:
        raise SegmentError(
            f"peer sent {magic!r} where a sealserve ipc handshake was expected; it is not a "
            "sealserve ipc endpoint"
        )
    return magic, version, pid, count


def _send(sock: socket.socket, body: bytes, fds: list[int]) -> None:
    data = _LEN.pack(len(body)) + body
    try:
        if fds:
            sent = socket.send_fds(sock, [data], fds)
            if sent < len(data):
                sock.sendall(data[sent:])
        else:
            sock.sendall(data)
    except OSError as exc:
        raise ChannelClosed(f"the peer went away during the handshake: {exc}") from exc


def _receive(sock: socket.socket, max_fds: int) -> tuple[bytes, list[int]]:
    fds: list[int] = []
    try:
        if max_fds:
            data, got, flags, _ = socket.recv_fds(sock, _MAX_MESSAGE + _LEN.size, max_fds)
            fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                raise SegmentError("peer sent more descriptors than a handshake carries")
        else:
            data = sock.recv(_MAX_MESSAGE + _LEN.size)
        buf = bytearray(data)
        if len(buf) < _LEN.size and buf:
            buf += _recv_exactly(sock, _LEN.size - len(buf))
        if not buf:
            raise ChannelClosed("the peer closed the socket during the handshake")
        (length,) = _LEN.unpack_from(buf)
        if length > _MAX_MESSAGE:
            raise SegmentError(f"handshake message of {length} bytes is too large")
        missing = _LEN.size + length - len(buf)
        if missing > 0:
            buf += _recv_exactly(sock, missing)
        return bytes(buf[_LEN.size : _LEN.size + length]), fds
    except TimeoutError as exc:
        _close_all(fds)
        raise IPCError("the peer did not complete the handshake in time") from exc
    except OSError as exc:
        _close_all(fds)
        raise ChannelClosed(f"the peer went away during the handshake: {exc}") from exc
    except BaseException:
        _close_all(fds)
        raise


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ChannelClosed("the peer closed the socket during the handshake")
        out += chunk
    return bytes(out)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
