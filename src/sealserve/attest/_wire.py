"""Messages of the platform's Unix sockets: one JSON object per SOCK_SEQPACKET datagram.

Both the launcher socket (``sealserve attest platform serve --socket``) and each launched
process's private attestation channel speak this.  File descriptors travel with a message as
SCM_RIGHTS ancillary data; binary fields are base64 inside the JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["MAX_FDS", "MAX_MESSAGE_BYTES", "b64", "recv_message", "send_message", "unb64"]

MAX_MESSAGE_BYTES: Final = 256 * 1024
#: Most descriptors one launch may hand over (stdio included).
MAX_FDS: Final = 16


def send_message(
    sock: socket.socket, message: Mapping[str, Any], *, fds: Sequence[int] = ()
) -> None:
    """Send ``message`` (and ``fds``) as one datagram."""
    data = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message is {len(data)} bytes; at most {MAX_MESSAGE_BYTES}")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_message(
    sock: socket.socket, *, max_fds: int = 0
) -> tuple[dict[str, Any], list[int]] | None:
    """The next message and the descriptors that came with it; ``None`` when the peer closed.

    Raises ``ValueError`` for a truncated or malformed message (received descriptors are
    closed first).
    """
    if max_fds:
        data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE_BYTES + 1, max_fds)
    else:
        data, fds, flags = sock.recv(MAX_MESSAGE_BYTES + 1), [], 0
    if not data and not fds:
        return None
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE_BYTES:
            raise ValueError("message or its descriptors were truncated")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("message is not a JSON object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, list(fds)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("invalid base64") from exc
