"""The local backend without processes: the command line an instance of a shape is started
with, and how an instance's memory is read from /proc."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sealserve.platform import LocalBackend, LocalOptions, PlatformConfig
from sealserve.platform._memory import pair_resident_mb, process_memory


def options(tmp_path: Path) -> LocalOptions:
    return LocalOptions(
        store_dir=tmp_path / "store",
        keyservice_url="http://127.0.0.1:8470",
        tee_socket=tmp_path / "tee.sock",
        platform_key_file=tmp_path / "platform.pub",
        keyservice_measurement="ab" * 32,
        run_dir=tmp_path / "run",
        io_threads=1,
    )


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("shape", PlatformConfig().shapes, ids=lambda s: f"{s.memory_mb}MB")
def test_each_shape_starts_a_host_whose_runtime_has_that_budget(
    tmp_path: Path, shape: object
) -> None:
    from sealserve.packer import InstanceShape

    assert isinstance(shape, InstanceShape)
    backend = LocalBackend(options(tmp_path))
    try:
        command = backend.instance_command(
            budget_mb=shape.budget_mb, concurrency=3, ready_file=tmp_path / "r"
        )
    finally:
        asyncio.run(backend.close())
    assert flag(command, "--memory-budget-mb") == str(int(shape.budget_mb))
    assert flag(command, "--concurrency") == "3"
    assert flag(command, "--memory-factor") == "4.0"
    # The instance's command line is the one `sealserve instance serve` takes.
    from typer.main import get_command

    from sealserve._cli.instance import app as instance_app

    names = {
        opt for param in get_command(instance_app).commands["serve"].params  # type: ignore[attr-defined]
        for opt in param.opts
    }  # fmt: skip
    assert {c for c in command if c.startswith("--")} <= names


def write_status(root: Path, pid: int, anon: int, file: int, shmem: int) -> None:
    folder = root / str(pid)
    folder.mkdir(parents=True)
    (folder / "status").write_text(
        f"Name:\tpython\nVmRSS:\t{anon + file + shmem} kB\nRssAnon:\t{anon} kB\n"
        f"RssFile:\t{file} kB\nRssShmem:\t{shmem} kB\nThreads:\t4\n"
    )


def test_a_pair_counts_private_pages_of_both_and_their_shared_memory_once(tmp_path: Path) -> None:
    write_status(tmp_path, 10, anon=51200, file=36864, shmem=20480)  # host: 50 + 36 + 20 MB
    write_status(tmp_path, 11, anon=40960, file=40960, shmem=30720)  # runtime: 40 + 40 + 30
    host = process_memory(10, proc=tmp_path)
    assert host is not None
    assert (host.private_mb, host.shared_mb) == (86.0, 20.0)
    # 86 + 80 private, and the larger shared mapping once (not 20 + 30).
    assert pair_resident_mb((10, 11), proc=tmp_path) == pytest.approx(86.0 + 80.0 + 30.0)
    assert pair_resident_mb((10, 12), proc=tmp_path) is None  # one of them is gone
    assert pair_resident_mb((), proc=tmp_path) is None
    (tmp_path / "13").mkdir()
    (tmp_path / "13" / "status").write_text("Name:\tkthreadd\nState:\tS\n")
    assert process_memory(13, proc=tmp_path) is None  # a kernel thread has no RssAnon
    with pytest.raises(ValueError, match="pid must be an int >= 1, got 0"):
        process_memory(0, proc=tmp_path)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_this_process_is_read_from_proc() -> None:
    memory = process_memory(os.getpid())
    assert memory is not None
    assert memory.private_mb > 1.0
    assert pair_resident_mb((os.getpid(),)) == pytest.approx(
        memory.private_mb + memory.shared_mb, rel=0.2
    )
