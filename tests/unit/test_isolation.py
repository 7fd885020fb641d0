"""The unit-test fence holds: each forbidden entry point fails loudly."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import pty
import socket
import subprocess
import sys
from collections.abc import Callable
from multiprocessing import shared_memory

import pytest

from tests.unit.conftest import ForbiddenInUnitTest


def test_network_is_refused() -> None:
    with socket.socket() as s, pytest.raises(ForbiddenInUnitTest, match="network"):
        s.connect(("127.0.0.1", 9))


def test_subprocess_is_refused() -> None:
    with pytest.raises(ForbiddenInUnitTest, match="subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


# Each helper starts a child and, only if the fence let it, waits for it to end, so that a
# failing test leaves no process behind.


def _posix_spawn(name: str) -> None:
    pid = getattr(os, name)(sys.executable, [sys.executable, "-c", "pass"], {})
    os.waitpid(pid, 0)


def _multiprocessing(method: str) -> None:
    process = multiprocessing.get_context(method).Process(target=os.getpid)
    process.start()
    process.join(60)


def _pty_fork(fork: Callable[[], tuple[int, int]]) -> None:
    pid, fd = fork()
    if pid == 0:  # the child leaves at once
        os._exit(0)
    os.close(fd)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("name", ["posix_spawn", "posix_spawnp"])
def test_posix_spawn_is_refused(name: str) -> None:
    with pytest.raises(ForbiddenInUnitTest, match="subprocess"):
        _posix_spawn(name)


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_multiprocessing_is_refused(method: str) -> None:
    with pytest.raises(ForbiddenInUnitTest, match="subprocess"):
        _multiprocessing(method)


@pytest.mark.parametrize("name", ["pty.fork", "os.forkpty"])
def test_pty_fork_is_refused(name: str) -> None:
    module, attribute = name.split(".")
    fork = getattr({"pty": pty, "os": os}[module], attribute)  # looked up under the fence
    with pytest.raises(ForbiddenInUnitTest, match="subprocess"):
        _pty_fork(fork)


def test_unconnected_datagrams_are_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(ForbiddenInUnitTest, match="network"):
            s.sendto(b"x", ("127.0.0.1", 9))
        with pytest.raises(ForbiddenInUnitTest, match="network"):
            s.sendto(b"x", 0, ("127.0.0.1", 9))
        with pytest.raises(ForbiddenInUnitTest, match="network"):
            s.sendmsg([b"x"], [], 0, ("127.0.0.1", 9))


def test_memfd_is_refused() -> None:
    with pytest.raises(ForbiddenInUnitTest, match="shared memory"):
        os.memfd_create("x")


def test_posix_shm_is_refused() -> None:
    with pytest.raises(ForbiddenInUnitTest, match="shared memory"):
        shared_memory.SharedMemory(create=True, size=64)


def test_file_mapping_is_refused(tmp_path: object) -> None:
    with pytest.raises(ForbiddenInUnitTest, match="map"):
        mmap.mmap(0, 4096)


def test_anonymous_private_memory_is_allowed() -> None:
    with mmap.mmap(-1, 4096) as m:
        m[:4] = b"abcd"
        assert m[:4] == b"abcd"


def test_socketpair_is_allowed() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"
        a.sendmsg([b"y"])  # without an address (how descriptors are passed)
        assert b.recv(1) == b"y"
