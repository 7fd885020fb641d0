"""The fork server on real processes: a template forks children that get exactly the stdio and
descriptors they were handed (nothing else of the template), their environment and arguments,
report their exit status, take signals, and outlive a template that ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from sealserve._forkserver import UNKNOWN_STATUS, ForkClient

pytestmark = pytest.mark.integration

# The template: imports json (its "preparation"), opens a file it keeps (which children must
# not inherit), and forks children that report what they see on descriptor 3.
TEMPLATE = textwrap.dedent(
    """
    import json, os, signal, socket, sys, time
    from sealserve._forkserver import serve_forks
    kept = open(os.devnull, "rb")  # a descriptor of the template's own
    def run_child(request):
        mode = request.args[0]
        if mode == "report":
            doc = {"fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
                   "args": list(request.args), "env": os.environ.get("FS_TEST"),
                   "handed": list(request.fds), "pid": os.getpid(), "ppid": os.getppid(),
                   "sid": os.getsid(0)}
            os.write(3, (json.dumps(doc) + "\\n").encode())
            sys.stdout.write("to stdout\\n")
            return 0
        if mode == "exit":
            raise SystemExit(int(request.args[1]))
        if mode == "hold":
            os.write(3, b"holding\\n")
            while True:
                time.sleep(1)
        return 1
    raise SystemExit(serve_forks(socket.socket(fileno=int(sys.argv[1])), run_child))
    """
)


@pytest.fixture
def template() -> Iterator[tuple[ForkClient, subprocess.Popen[bytes]]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    popen = subprocess.Popen(
        [sys.executable, "-c", TEMPLATE, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    client = ForkClient(ours)
    try:
        yield client, popen
    finally:
        client.close()
        popen.wait(10)


def _line(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as reader:
        return reader.readline()


def test_a_child_gets_its_stdio_and_handed_descriptors_and_nothing_else(
    template: tuple[ForkClient, subprocess.Popen[bytes]],
) -> None:
    client, popen = template
    read_out, write_out = os.pipe()
    read_rep, write_rep = os.pipe()
    try:
        child = client.fork(
            ["report", "x y"], env={"FS_TEST": "yes"}, stdio=(None, write_out, None),
            fds=[write_rep],
        )  # fmt: skip
    finally:
        os.close(write_out)
        os.close(write_rep)
    doc = json.loads(_line(read_rep))
    assert child.wait(30) == 0
    assert _line(read_out) == b"to stdout\n"
    assert doc["args"] == ["report", "x y"]
    assert doc["env"] == "yes"
    assert doc["handed"] == [3]
    assert doc["pid"] == child.pid
    assert doc["ppid"] == popen.pid
    assert doc["sid"] == child.pid  # a session of its own
    # stdio, the handed descriptor and the one listdir itself opens: none of the template's
    assert doc["fds"] == [0, 1, 2, 3, 4]


def test_exit_statuses_signals_and_many_children(
    template: tuple[ForkClient, subprocess.Popen[bytes]],
) -> None:
    client, _ = template
    codes = [client.fork(["exit", str(n)], env={}) for n in (0, 3, 77)]
    assert [c.wait(30) for c in codes] == [0, 3, 77]
    read_end, write_end = os.pipe()
    held = client.fork(["hold"], env={}, fds=[write_end])
    os.close(write_end)
    assert _line(read_end) == b"holding\n"
    with pytest.raises(subprocess.TimeoutExpired):
        held.wait(0.2)
    assert held.poll() is None
    held.send_signal(signal.SIGTERM)
    assert held.wait(30) == -signal.SIGTERM


def test_children_outlive_their_template(
    template: tuple[ForkClient, subprocess.Popen[bytes]],
) -> None:
    client, popen = template
    read_end, write_end = os.pipe()
    held = client.fork(["hold"], env={}, fds=[write_end])
    os.close(write_end)
    assert _line(read_end) == b"holding\n"
    client.close()  # the template ends; the child does not
    popen.wait(10)
    time.sleep(0.2)
    assert held.poll() is None
    os.kill(held.pid, signal.SIGKILL)
    assert held.wait(30) == UNKNOWN_STATUS  # nobody could read its status
