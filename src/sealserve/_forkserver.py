"""A fork server: a process that pays its imports once and forks ready children on request.

Starting a Python process that imports onnxruntime, numpy, cryptography, Starlette and the rest
takes a second or more; forking one that already has takes milliseconds.  A *template* runs
:func:`serve_forks` on a ``SOCK_SEQPACKET`` control socket, single-threaded, and for each
request forks a child that runs ``run_child(request)`` and exits with its status.  The
parent side is :class:`ForkClient`; each child is a :class:`ForkedProcess` (a
``subprocess.Popen`` look-alike: ``pid``, ``poll``, ``wait``, ``send_signal``, ``returncode``).

Protocol (one JSON object per datagram, descriptors attached with ``SCM_RIGHTS``)::

    client -> template  {"op": "fork", "id": n, "args": [...], "env": {...},
                         "stdio": [i | null] * 3, "fds": [i, ...], "session": bool}
    template -> client  {"id": n, "ok": true, "pid": p}  or  {"id": n, "ok": false, "error"}
                        {"event": "exited", "pid": p, "returncode": c}   (when a child ends)

``i`` index the attached descriptors.  The child gets its stdio ``dup2``-ed from them and the
``fds`` at 3, 4, ... in order (``ForkRequest.fds`` says so: the caller can name them in the
child's arguments and environment before it forks); every other descriptor of the template is
closed in it, as a fresh process started with ``close_fds`` would have none.  The template
ends when the control socket closes; its children live on (each has its own lifeline).

The template is its caller's own code and the child gets the caller's bytes: there is no
trust boundary here (the TEE's templates are measured by the platform that runs them, see
:mod:`sealserve.attest`).  Randomness: Python's ``random`` and OpenSSL reseed in a forked
child, and keys are made after the fork, never in the template.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

__all__ = ["ForkClient", "ForkRequest", "ForkedProcess", "serve_forks"]

_MAX_BYTES: Final = 256 * 1024
_MAX_FDS: Final = 16
#: Reported for a child whose status nobody could read (its template ended first).
UNKNOWN_STATUS: Final = 255
#: Where a child parks its descriptors while it puts them in place.
_HIGH_FD: Final = 512


def _fd_limit() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


@dataclasses.dataclass(frozen=True)
class ForkRequest:
    """What a child is asked to run: its arguments, environment and handed descriptors (in
    the child: 3, 4, ... in the order they were handed)."""

    args: tuple[str, ...]
    env: Mapping[str, str]
    fds: tuple[int, ...]


def _send(sock: socket.socket, doc: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(dict(doc), separators=(",", ":")).encode("utf-8")
    socket.send_fds(sock, [data], list(fds))


def _recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_BYTES, _MAX_FDS)
    if not data:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise ValueError("a fork-server message is not a JSON object")
    return doc, fds


# -- the template's side ---------------------------------------------------------------------


def serve_forks(control: socket.socket, run_child: Callable[[ForkRequest], int]) -> int:
    """Serve fork requests on ``control`` until it closes; returns 0.

    Must be called single-threaded (a fork copies only the calling thread).  Each child runs
    ``run_child`` and exits with its return value (1 if it raised, the code of a
    ``SystemExit``).
    """
    children: dict[int, int] = {}  # pidfd -> pid
    poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    while True:
        for fd, _events in poller.poll():
            if fd == control.fileno():
                try:
                    received = _recv(control)
                except (OSError, ValueError):
                    received = None
                if received is None:
                    for pidfd in children:
                        os.close(pidfd)
                    return 0
                doc, fds = received
                _serve_request(control, doc, fds, run_child, children, poller)
            elif fd in children:
                pid = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                code = _reap(pid)
                with contextlib.suppress(OSError):
                    _send(control, {"event": "exited", "pid": pid, "returncode": code})


def _reap(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return UNKNOWN_STATUS
    return os.waitstatus_to_exitcode(status)


def _serve_request(
    control: socket.socket,
    doc: dict[str, Any],
    fds: list[int],
    run_child: Callable[[ForkRequest], int],
    children: dict[int, int],
    poller: select.poll,
) -> None:
    ident = doc.get("id")
    try:
        if doc.get("op") != "fork":
            raise ValueError(f"unknown op {doc.get('op')!r}")
        request, stdio, session = _parse(doc, fds)
    except (ValueError, TypeError) as exc:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            _send(control, {"id": ident, "ok": False, "error": str(exc)})
        return
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _become_child(control, children, stdio, request, session, run_child)
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    pidfd = os.pidfd_open(pid)
    children[pidfd] = pid
    poller.register(pidfd, select.POLLIN)
    with contextlib.suppress(OSError):
        _send(control, {"id": ident, "ok": True, "pid": pid})


def _parse(doc: dict[str, Any], fds: list[int]) -> tuple[ForkRequest, list[int | None], bool]:
    def pick(index: object) -> int | None:
        if index is None:
            return None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(fds):
            raise ValueError(f"descriptor index {index!r} is out of range")
        return fds[index]

    args = doc.get("args") or []
    env = doc.get("env") or {}
    stdio = doc.get("stdio") or [None, None, None]
    passed = doc.get("fds") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("args must be a list of strings")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env must be an object of strings")
    if not isinstance(stdio, list) or len(stdio) != 3 or not isinstance(passed, list):
        raise ValueError("stdio must be three indexes or nulls, fds a list of indexes")
    picked = [pick(i) for i in stdio]
    handed = tuple(fd for fd in (pick(i) for i in passed) if fd is not None)
    return ForkRequest(tuple(args), dict(env), handed), picked, bool(doc.get("session", True))


def _become_child(
    control: socket.socket,
    children: dict[int, int],
    stdio: list[int | None],
    request: ForkRequest,
    session: bool,
    run_child: Callable[[ForkRequest], int],
) -> None:
    code = 1
    try:
        if session:
            os.setsid()
        # Signal dispositions stay what the interpreter set up (SIGPIPE ignored, SIGINT as
        # KeyboardInterrupt): serve_forks installs no handler of its own.
        control.close()
        for pidfd in children:
            with contextlib.suppress(OSError):
                os.close(pidfd)
        # Move what the child keeps out of the way, then into place: stdio at 0-2, the handed
        # descriptors at 3, 4, ...; then close everything else.
        high = [None if fd is None else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
                for fd in (*stdio, *request.fds)]  # fmt: skip
        for target, fd in enumerate(high):
            if fd is not None:
                os.dup2(fd, target)  # dup2 clears close-on-exec
        top = 3 + len(request.fds)
        os.closerange(top, _fd_limit())
        request = ForkRequest(request.args, request.env, tuple(range(3, top)))
        os.environ.clear()
        os.environ.update(request.env)
        code = run_child(request)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a child must end here, whatever happened
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


# -- the caller's side -----------------------------------------------------------------------


class ForkedProcess:
    """A child of a template, as the caller sees it (like ``subprocess.Popen``)."""

    def __init__(self, client: ForkClient, pid: int) -> None:
        self._client = client
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None

    def _exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        # With the template gone nobody reports the status; the pidfd still says whether
        # the process ended.
        if (
            self.returncode is None
            and self._pidfd is not None
            and self._client.closed
            and select.select([self._pidfd], [], [], 0)[0]
        ):
            self._exited(UNKNOWN_STATUS)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if not self._done.wait(timeout if not self._client.closed else 0):
            if (
                self._client.closed
                and self._pidfd is not None
                and select.select([self._pidfd], [], [], timeout)[0]
            ):
                self._exited(UNKNOWN_STATUS)
                return UNKNOWN_STATUS
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None or self._pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self._pidfd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"ForkedProcess(pid={self.pid}, returncode={self.returncode!r})"


class ForkClient:
    """The caller's end of a template's control socket (thread-safe).

    A receiver thread reads the template's answers and exit events.  :meth:`close` closes
    the socket, which ends the template (its children live on).
    """

    def __init__(self, sock: socket.socket, *, name: str = "forkserver") -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise ValueError("the control socket must be a SOCK_SEQPACKET socket")
        self._sock = sock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._answers: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}  # exits seen before the fork's answer was taken
        self.closed = False
        self._thread = threading.Thread(target=self._receive, name=f"{name}-rx", daemon=True)
        self._thread.start()

    def fork(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        stdio: Sequence[int | None] = (None, None, None),
        fds: Sequence[int] = (),
        session: bool = True,
        timeout: float = 30.0,
    ) -> ForkedProcess:
        """Ask the template for a child; ``OSError`` if it cannot make one."""
        attached: list[int] = []
        stdio_idx: list[int | None] = []
        for fd in stdio:
            if fd is None:
                stdio_idx.append(None)
            else:
                stdio_idx.append(len(attached))
                attached.append(fd)
        fds_idx = list(range(len(attached), len(attached) + len(fds)))
        attached += list(fds)
        if len(attached) > _MAX_FDS:
            raise ValueError(f"at most {_MAX_FDS} descriptors, got {len(attached)}")
        ident = next(self._ids)
        event = threading.Event()
        box: list[dict[str, Any]] = []
        with self._lock:
            if self.closed:
                raise OSError("the fork server is closed")
            self._answers[ident] = (event, box)
        doc = {"op": "fork", "id": ident, "args": list(args), "env": dict(env),
               "stdio": stdio_idx, "fds": fds_idx, "session": session}  # fmt: skip
        try:
            _send(self._sock, doc, attached)
        except OSError:
            with self._lock:
                self._answers.pop(ident, None)
            raise
        if not event.wait(timeout) or not box:
            with self._lock:
                self._answers.pop(ident, None)
            raise OSError("the fork server did not answer")
        answer = box[0]
        pid = answer.get("pid")
        if not answer.get("ok") or not isinstance(pid, int) or isinstance(pid, bool):
            raise OSError(f"the fork server could not fork: {answer.get('error', 'no answer')}")
        child = ForkedProcess(self, pid)
        with self._lock:
            self._children[pid] = child
            early = self._early.pop(pid, None)
        if early is not None:
            child._exited(early)
        return child

    def _receive(self) -> None:
        while True:
            try:
                received = _recv(self._sock)
            except (OSError, ValueError):
                received = None
            if received is None:
                break
            doc, fds = received
            for fd in fds:  # the template never sends descriptors
                with contextlib.suppress(OSError):
                    os.close(fd)
            if doc.get("event") == "exited":
                pid, code = doc.get("pid"), doc.get("returncode")
                if isinstance(pid, int) and isinstance(code, int):
                    with self._lock:
                        child = self._children.pop(pid, None)
                        if child is None:
                            self._early[pid] = code
                    if child is not None:
                        child._exited(code)
                continue
            ident = doc.get("id")
            with self._lock:
                waiting = self._answers.pop(ident, None) if isinstance(ident, int) else None
            if waiting is not None:
                waiting[1].append(doc)
                waiting[0].set()
        with self._lock:
            self.closed = True
            answers, self._answers = self._answers, {}
        for event, _box in answers.values():
            event.set()

    def close(self) -> None:
        with self._lock:
            self.closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5.0)

    def __enter__(self) -> ForkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
