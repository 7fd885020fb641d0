"""The ``latency`` hint between two real processes that share one core.

Spinning only pays while the peer runs on another core: a peer on the spinner's own core
cannot answer until the spin ends.  Two processes pinned to one CPU play ping-pong under the
``latency`` hint; their spins must still end with the answer (they yield the core to the
peer they see on it), not run out their budget and block for every message, which made the
hint five times slower than ``efficiency`` there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from sealserve.ipc import Connection

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ipc_core")]

_ECHO = """
import os, socket, sys
from sealserve.ipc import Connection
os.sched_setaffinity(0, {int(sys.argv[1])})
sock = socket.socket(fileno=int(sys.argv[2]))
with Connection.open(sock, qos="latency") as conn:
    while True:
        sample = conn.subscriber.receive(timeout=30)
        if sample is None:
            sys.exit(3)
        with sample:
            data = bytes(sample.view)
        if data == b"stop":
            break
        with conn.publisher.loan(len(data)) as loan:
            loan.view[:] = data
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_latency_spins_answer_within_their_budget_on_a_shared_core() -> None:
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    mine, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_ECHO), str(cpu), str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    os.sched_setaffinity(0, {cpu})
    try:
        with Connection.create(mine, qos="latency", timeout=30) as conn:
            rounds = 300
            for i in range(rounds):
                with conn.publisher.loan(64) as loan:
                    loan.view[:8] = i.to_bytes(8, "little")
                    loan.view[8:] = bytes(56)
                reply = conn.subscriber.receive(timeout=30)
                assert reply is not None
                with reply:
                    assert bytes(reply.view[:8]) == i.to_bytes(8, "little")
            waits = conn.subscriber.stats()
            conn.publisher.send(b"stop")
            assert child.wait(timeout=30) == 0
    finally:
        mine.close()
        os.sched_setaffinity(0, before)
        if child.poll() is None:
            child.kill()
            child.wait()
    # Every reply was waited for; the peer was seen on this core, and the spins that yielded
    # to it mostly ended with the reply instead of running out and blocking.
    assert waits.spins_on_shared_cpu > 0
    assert waits.spin_hits >= rounds // 2
    assert waits.spin_misses <= rounds // 4
