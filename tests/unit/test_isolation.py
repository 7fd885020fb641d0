"""The unit-test fence holds: each forbidden entry point fails loudly."""

from __future__ import annotations

import mmap
import os
import socket
import subprocess
import sys
from multiprocessing import shared_memory

import pytest

from tests.unit.conftest import ForbiddenInUnitTest


def test_network_is_refused() -> None:
    with socket.socket() as s, pytest.raises(ForbiddenInUnitTest, match="network"):
        s.connect(("127.0.0.1", 9))


def test_subprocess_is_refused() -> None:
    with pytest.raises(ForbiddenInUnitTest, match="subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


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
