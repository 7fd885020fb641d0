"""The platform daemon: a :class:`SimulatedPlatform` behind a Unix socket.

``sealserve attest platform serve --socket PATH --data-dir DIR`` runs one.  The socket is
created mode 0600.  Each connection makes one request (one JSON datagram, see ``_wire``):

* ``{"op": "info"}`` -> the platform public key (empty on a hardware backend), the backend,
  TCB status and entries;
* ``{"op": "measure", "entry", "config"}`` -> the measurement a launch would carry;
* ``{"op": "prepare", "entry", "config", "debug"}`` -> ``{"ok"}``: start a measured template of
  that entry (``sealserve.attest._templates``) so that its launches fork from it;
* ``{"op": "launch", "entry", "args", "env", "config", "debug", "stdio": [i|null]*3}`` with
  descriptors attached (SCM_RIGHTS) -> ``{"ok", "pid", "measurement"}``.  The connection then
  *is* the handle: the launcher sends ``{"op": "signal", "signal": n}``; the daemon sends
  ``{"event": "exited", "returncode": n}`` when the process exits (it reaps it); and if the
  launcher goes away, the daemon kills the process.

The key never leaves this process, and no request returns evidence: only a launched process
can obtain it, on its own channel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Final

from sealserve._log import get_logger
from sealserve._resource import Resource, ResourceState, ResourceStateError
from sealserve.attest._entries import ENTRIES
from sealserve.attest._platform import LaunchedProcess, SimulatedPlatform
from sealserve.attest._wire import MAX_FDS, recv_message, send_message
from sealserve.errors import TeeError

__all__ = ["PlatformServer"]

_log = get_logger(__name__)
_ALLOWED_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT})
_BACKLOG: Final = 64


class PlatformServer(Resource):
    """Serves an open :class:`SimulatedPlatform` on a Unix socket; a context manager.

    :meth:`open` binds and starts accepting in a background thread; :meth:`close` stops
    accepting, kills the processes launched through it and removes the socket file.
    """

    resource_name = "the platform server"

    def __init__(self, platform: SimulatedPlatform, *, socket_path: str | os.PathLike[str]) -> None:
        if not isinstance(platform, SimulatedPlatform):
            raise TypeError(f"platform must be a SimulatedPlatform, got {type(platform).__name__}")
        super().__init__()
        self._platform = platform
        self._path = Path(socket_path)
        if len(os.fsencode(self._path)) >= 108:
            raise ValueError(f"socket_path is too long for a Unix socket: {str(self._path)!r}")
        self._listener: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()

    @property
    def socket_path(self) -> Path:
        return self._path

    def _open(self) -> None:
        _clear_stale_socket(self._path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self._path))
        except OSError as exc:
            listener.close()
            raise TeeError(f"cannot listen on '{self._path}': {exc}") from exc
        finally:
            os.umask(old_umask)
        listener.listen(_BACKLOG)
        self._listener = listener
        self._accepter = threading.Thread(target=self._accept_loop, name="tee-accept", daemon=True)
        self._accepter.start()
        _log.event("platform.serving", socket=str(self._path))

    def _close(self) -> None:
        with self._lock:
            connections = list(self._connections)
        if self._listener is None:
            return  # never listened
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._accepter is not None:
            self._accepter.join(5.0)
        for worker in list(self._workers):
            worker.join(10.0)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        _log.event("platform.stopped", socket=str(self._path))

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the server stops accepting (after :meth:`close`)."""
        if self._accepter is None:
            return True
        self._accepter.join(timeout)
        return not self._accepter.is_alive()

    # -- internals -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self.state is not ResourceState.OPENED:
                    conn.close()
                    return
                self._connections.add(conn)
                worker = threading.Thread(
                    target=self._serve, args=(conn,), name="tee-conn", daemon=True
                )
                self._workers.add(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except Exception as exc:  # a bad client must not take the daemon down
            _log.event("platform.request_failed", level=logging.WARNING, error=type(exc).__name__)
            with contextlib.suppress(OSError):
                send_message(conn, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._workers.discard(threading.current_thread())
            conn.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            received = recv_message(conn, max_fds=MAX_FDS)
        except ValueError as exc:
            send_message(conn, {"ok": False, "error": str(exc)})
            return
        if received is None:
            return
        request, fds = received
        try:
            op = request.get("op")
            if op == "info":
                send_message(conn, self._info())
            elif op == "measure":
                measurement = self._platform.measurement(
                    str(request.get("entry")), config=_str_map(request.get("config"), "config")
                )
                send_message(conn, {"ok": True, "measurement": measurement})
            elif op == "launch":
                self._launch(conn, request, fds)
            elif op == "prepare":
                self._platform.prepare(
                    str(request.get("entry")),
                    config=_str_map(request.get("config"), "config"),
                    debug=bool(request.get("debug", False)),
                )
                send_message(conn, {"ok": True})
            else:
                send_message(conn, {"ok": False, "error": f"unknown op {op!r}"})
        except (ValueError, TypeError, TeeError, ResourceStateError) as exc:
            send_message(conn, {"ok": False, "error": str(exc)})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _info(self) -> dict[str, Any]:
        simulated = self._platform.backend_name == "simulated"
        return {
            "ok": True,
            # A hardware platform has no key: its processes' evidence is the hardware's.
            "public_key": self._platform.public_key_bytes.hex() if simulated else "",
            "backend": self._platform.backend_name,
            "tcb_status": self._platform.tcb_status,
            "entries": sorted(ENTRIES),
            "templates": self._platform.templates(),
        }

    def _launch(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        stdio = request.get("stdio") or [None, None, None]
        if not isinstance(stdio, list) or len(stdio) != 3:
            raise ValueError("stdio must be a list of three descriptor indexes or nulls")
        picked = [_pick(fds, i) for i in stdio]
        extra = request.get("fds") or []
        if not isinstance(extra, list):
            raise ValueError("fds must be a list of descriptor indexes")
        passed = [_pick(fds, i) for i in extra]
        args = request.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("args must be a list of strings")
        process = self._platform.launch(
            str(request.get("entry")),
            args=args,
            env=_str_map(request.get("env"), "env"),
            config=_str_map(request.get("config"), "config"),
            fds=[fd for fd in passed if fd is not None],
            stdin=picked[0],
            stdout=picked[1],
            stderr=picked[2],
            debug=bool(request.get("debug", False)),
        )
        with process:
            send_message(conn, {"ok": True, "pid": process.pid, "measurement": process.measurement})
            for fd in fds:  # the child has its copies; drop ours now
                with contextlib.suppress(OSError):
                    os.close(fd)
            fds.clear()
            watcher = threading.Thread(
                target=self._watch, args=(conn, process), name="tee-reaper", daemon=True
            )
            watcher.start()
            self._follow(conn, process)
            watcher.join()

    def _follow(self, conn: socket.socket, process: LaunchedProcess) -> None:
        """Relay the launcher's signals until it hangs up (then the process is killed)."""
        while True:
            try:
                received = recv_message(conn)
            except (OSError, ValueError):
                received = None
            if received is None:
                if process.returncode is None:
                    _log.event("platform.launcher_gone", pid=process.pid)
                process.kill()
                return
            message, _ = received
            signum = message.get("signal")
            if message.get("op") == "signal" and signum in _ALLOWED_SIGNALS:
                process.send_signal(int(signum))

    def _watch(self, conn: socket.socket, process: LaunchedProcess) -> None:
        returncode = process.wait()
        _log.event("platform.exited", entry=process.entry, pid=process.pid, returncode=returncode)
        with contextlib.suppress(OSError):
            send_message(conn, {"event": "exited", "returncode": returncode})


def _pick(fds: list[int], index: object) -> int | None:
    if index is None:
        return None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(fds):
        raise ValueError(f"descriptor index {index!r} is out of range (got {len(fds)} fds)")
    return fds[index]


def _str_map(value: object, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{name} must be an object of strings")
    return dict(value)


def _clear_stale_socket(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise TeeError(f"'{path}' exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a leftover of a crashed daemon
        return
    finally:
        probe.close()
    raise TeeError(f"another platform is already serving on '{path}'")
