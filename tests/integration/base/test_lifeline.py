"""A child tied with a lifeline ends when its parent dies, even by SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_CHILD = """
import signal, sys, time
from sealserve._lifeline import watch_inherited_lifeline
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
assert watch_inherited_lifeline(grace_s=0.5)
print("watching", flush=True)
time.sleep(600)
"""

_PARENT = """
import os, subprocess, sys, time
from sealserve._lifeline import LIFELINE_ENV, tie_to_this_process
env = dict(os.environ)
fd = tie_to_this_process(env)
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env,
                         pass_fds=(fd,), stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "watching"
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("mode", ["obliging", "stubborn"])
def test_child_ends_when_its_parent_is_killed(mode: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _CHILD, mode], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30  # a bound on waiting, not a performance assertion
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), f"the {mode} child outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_a_child_without_a_lifeline_is_not_watched() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sealserve._lifeline import *; print(watch_inherited_lifeline())",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "False"


def test_a_bad_lifeline_variable_is_refused() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from sealserve._lifeline import *; watch_inherited_lifeline()"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SEALSERVE_LIFELINE_FD": "abc"},
    )
    assert out.returncode != 0
    assert "must be a descriptor number" in out.stderr
