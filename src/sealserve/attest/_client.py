"""The launcher's side of the platform daemon: :class:`PlatformClient` and :class:`RemoteProcess`.

The untrusted instance host uses this to start the sealed runtime: it names an entry, hands
over descriptors (one end of its IPC socket pair, its log pipes), and keeps a handle on which it
can wait, signal and learn the exit status.  It never sees the platform key nor any evidence it
did not get from the launched process itself.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sealserve._resource import Resource
from sealserve.attest._wire import MAX_FDS, recv_message, send_message
from sealserve.errors import TeeError

__all__ = ["PlatformClient", "RemoteProcess"]


class PlatformClient(Resource):
    """Talks to a platform daemon over its Unix socket; a context manager.

    :meth:`open` checks that the daemon answers.  Every request uses its own connection;
    each launched process keeps one for its handle.
    """

    resource_name = "the platform client"

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        super().__init__()
        self._path = Path(socket_path)
        self._timeout = timeout
        self._info: dict[str, Any] = {}

    @property
    def socket_path(self) -> Path:
        return self._path

    def _open(self) -> None:
        self._info = self._request({"op": "info"})

    def info(self) -> dict[str, Any]:
        """What the daemon says about itself: public key (hex), TCB status, entries.

        Verifiers must not pin a key learned this way: pin ``<data-dir>/tee/platform.pub``.
        """
        self._check_open()
        return dict(self._info)

    def measurement(self, entry: str, *, config: Mapping[str, str] | None = None) -> str:
        self._check_open()
        reply = self._request({"op": "measure", "entry": entry, "config": dict(config or {})})
        return str(reply["measurement"])

    def templates(self) -> list[dict[str, Any]]:
        """The daemon's running templates now: entry, pid, measurement, launches forked."""
        self._check_open()
        templates = self._request({"op": "info"}).get("templates", [])
        return [dict(t) for t in templates if isinstance(t, dict)]

    def prepare(
        self, entry: str, *, config: Mapping[str, str] | None = None, debug: bool = False
    ) -> None:
        """Ask the daemon to start a measured template of ``entry`` with ``config`` (in the
        background), so that its launches fork from it instead of starting afresh."""
        self._check_open()
        self._request(
            {"op": "prepare", "entry": entry, "config": dict(config or {}), "debug": debug}
        )

    def launch(
        self,
        entry: str,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        config: Mapping[str, str] | None = None,
        fds: Sequence[int] = (),
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        debug: bool = False,
    ) -> RemoteProcess:
        """Launch ``entry`` through the daemon (see :class:`~sealserve.attest.tee.Launcher`)."""
        self._check_open()
        if isinstance(args, str):
            raise TypeError("args must be a sequence of strings, not one string")
        send: list[int] = []
        stdio: list[int | None] = []
        for fd in (stdin, stdout, stderr):
            if fd is None:
                stdio.append(None)
            else:
                stdio.append(len(send))
                send.append(fd)
        extra = list(range(len(send), len(send) + len(fds)))
        send.extend(fds)
        if len(send) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors (stdio included), got {len(send)}")
        request = {
            "op": "launch",
            "entry": entry,
            "args": list(args),
            "env": dict(env or {}),
            "config": dict(config or {}),
            "debug": bool(debug),
            "stdio": stdio,
            "fds": extra,
        }
        conn = self._connect()
        try:
            send_message(conn, request, fds=send)
            reply = _expect_reply(conn)
        except BaseException:
            conn.close()
            raise
        conn.settimeout(None)
        return RemoteProcess(
            conn,
            pid=int(reply["pid"]),
            entry=entry,
            measurement=str(reply["measurement"]),
            debug=bool(debug),
        )

    def _request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        conn = self._connect()
        with conn:
            send_message(conn, request)
            return _expect_reply(conn)

    def _connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.settimeout(self._timeout)
        try:
            conn.connect(str(self._path))
        except OSError as exc:
            conn.close()
            raise TeeError(
                f"cannot reach the TEE platform at '{self._path}': {exc.strerror or exc}. "
                "Start it with: sealserve attest platform serve --socket PATH --data-dir DIR"
            ) from exc
        return conn

    def _check_open(self) -> None:
        self._check_opened()

    def __repr__(self) -> str:
        return f"PlatformClient(socket_path={str(self._path)!r}, state={self.state.value})"


class RemoteProcess:
    """A handle on a process the daemon launched; closing it kills the process."""

    def __init__(
        self, conn: socket.socket, *, pid: int, entry: str, measurement: str, debug: bool
    ) -> None:
        self._conn = conn
        self._pid = pid
        self._entry = entry
        self._measurement = measurement
        self._debug = debug
        self._returncode: int | None = None
        self._recv_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def entry(self) -> str:
        return self._entry

    @property
    def measurement(self) -> str:
        return self._measurement

    @property
    def debug(self) -> bool:
        return self._debug

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and not self._closed:
            self.wait(0)
        return self._returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once the daemon reports it; None if ``timeout`` passed first."""
        with self._recv_lock:
            if self._returncode is not None or self._closed:
                return self._returncode
            try:
                ready, _, _ = select.select([self._conn], [], [], timeout)
            except (OSError, ValueError):
                return self._returncode
            if not ready:
                return None
            try:
                received = recv_message(self._conn)
            except (OSError, ValueError) as exc:
                raise TeeError(
                    f"lost the platform while waiting for pid {self._pid}: {exc}"
                ) from exc
            if received is None:
                raise TeeError(f"the platform went away while pid {self._pid} was running")
            message, _ = received
            if message.get("event") == "exited":
                self._returncode = int(message["returncode"])
            return self._returncode

    def send_signal(self, signum: int) -> None:
        with self._send_lock:
            if self._closed or self._returncode is not None:
                return
            with contextlib.suppress(OSError):
                send_message(self._conn, {"op": "signal", "signal": int(signum)})

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Kill the process if it still runs, wait briefly for its exit, hang up."""
        if self._closed:
            return
        if self._returncode is None:
            self.kill()
            with contextlib.suppress(TeeError):
                self.wait(5.0)
        self._closed = True
        self._conn.close()

    def __enter__(self) -> RemoteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RemoteProcess(entry={self._entry!r}, pid={self._pid}, "
            f"returncode={self._returncode!r})"
        )


def _expect_reply(conn: socket.socket) -> dict[str, Any]:
    try:
        received = recv_message(conn)
    except (OSError, ValueError) as exc:
        raise TeeError(f"the TEE platform did not answer: {exc}") from exc
    if received is None:
        raise TeeError("the TEE platform closed the connection without answering")
    reply, _ = received
    if not reply.get("ok"):
        raise TeeError(f"the TEE platform refused: {reply.get('error', 'unknown error')}")
    return reply
