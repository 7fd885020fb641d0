"""Unit tests touch no network, no subprocess and no shared memory.

An autouse fixture replaces the entry points with functions that fail loudly, so a unit test
that reaches for one of them fails instead of quietly becoming an integration test.  Socket
pairs (which event loops use to wake themselves) stay allowed; connecting, binding or sending
a datagram to an address does not.  Processes are refused at every door: ``subprocess``,
``os.fork``/``forkpty``/``posix_spawn[p]``/``system``, ``pty.fork`` and the low-level
``_posixsubprocess.fork_exec`` that multiprocessing's spawn and forkserver contexts use.

Fixtures more than one area uses live here too (``sealserve_logs``).
"""

from __future__ import annotations

import _posixsubprocess
import logging
import mmap
import os
import pty
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


class ForbiddenInUnitTest(AssertionError):
    """A unit test reached for the network, a subprocess or shared memory."""


def _refuse(what: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise ForbiddenInUnitTest(
            f"unit tests may not use {what}; move the test to tests/integration"
        )

    return refuse


_REAL_MMAP = mmap.mmap
_REAL_SENDMSG = socket.socket.sendmsg


def _anonymous_mmap_only(fileno: int, *args: Any, **kwargs: Any) -> mmap.mmap:
    if fileno != -1:
        raise ForbiddenInUnitTest("unit tests may not map files or shared memory")
    return _REAL_MMAP(fileno, *args, **kwargs)


def _sendmsg_without_address(self: socket.socket, *args: Any, **kwargs: Any) -> int:
    """``sendmsg`` on a connected socket (a socket pair passing descriptors) is allowed; with a
    destination address it is a datagram to the network."""
    if len(args) > 3 or "address" in kwargs:
        raise ForbiddenInUnitTest(
            "unit tests may not use the network (socket.sendmsg to an address); "
            "move the test to tests/integration"
        )
    return _REAL_SENDMSG(self, *args, **kwargs)


@pytest.fixture(autouse=True)
def _no_network_subprocess_or_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _refuse("the network (socket.connect)"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("the network (socket.connect_ex)"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("the network (socket.bind)"))
    monkeypatch.setattr(socket.socket, "sendto", _refuse("the network (socket.sendto)"))
    monkeypatch.setattr(socket.socket, "sendmsg", _sendmsg_without_address)
    monkeypatch.setattr(socket, "create_connection", _refuse("the network (create_connection)"))
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("the network (getaddrinfo)"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("subprocesses (Popen)"))
    monkeypatch.setattr(os, "fork", _refuse("subprocesses (fork)"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("subprocesses (posix_spawn)"))
    monkeypatch.setattr(os, "posix_spawnp", _refuse("subprocesses (posix_spawnp)"))
    monkeypatch.setattr(os, "forkpty", _refuse("subprocesses (forkpty)"))
    monkeypatch.setattr(pty, "fork", _refuse("subprocesses (pty.fork)"))
    # What multiprocessing's spawn and forkserver contexts (and its resource tracker) start
    # their processes with: multiprocessing.util.spawnv_passfds calls it.
    monkeypatch.setattr(
        _posixsubprocess,
        "fork_exec",
        _refuse("subprocesses (fork_exec: multiprocessing spawn/forkserver)"),
    )
    monkeypatch.setattr(os, "system", _refuse("subprocesses (system)"))
    if hasattr(os, "memfd_create"):
        monkeypatch.setattr(os, "memfd_create", _refuse("shared memory (memfd_create)"))
    monkeypatch.setattr(mmap, "mmap", _anonymous_mmap_only)
    try:
        import _posixshmem

        monkeypatch.setattr(_posixshmem, "shm_open", _refuse("shared memory (shm_open)"))
    except ImportError:  # pragma: no cover - not on Linux
        pass


@pytest.fixture
def sealserve_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` attached to the ``sealserve`` logger at DEBUG, whatever configured it."""
    logger = logging.getLogger("sealserve")
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
