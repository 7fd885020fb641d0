"""The platform daemon over its Unix socket: the untrusted launcher's view."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attest import Policy, TrustAnchors, report_data_for, verify_evidence
from sealserve.attest._wire import b64, recv_message, send_message
from sealserve.attest.tee import Launcher, PlatformClient, PlatformServer, SimulatedPlatform
from sealserve.errors import AttestationError, TeeError
from tests.integration.attest._probe_io import (
    evidence_of,
    launch_probe,
    probe_line_on_passed_fd,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def server(platform: SimulatedPlatform, socket_dir: Path) -> Iterator[PlatformServer]:
    with PlatformServer(platform, socket_path=socket_dir / "tee.sock") as srv:
        yield srv


@pytest.fixture
def client(server: PlatformServer) -> Iterator[PlatformClient]:
    with PlatformClient(server.socket_path) as c:
        yield c


def _report_data() -> bytes:
    return report_data_for(os.urandom(32), os.urandom(32))


def _wait_gone(pid: int, *, bound_s: float = 30.0) -> bool:
    """Whether ``pid`` disappears within ``bound_s`` (polled; a bound, not a measurement)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_socket_is_private(server: PlatformServer) -> None:
    assert oct(server.socket_path.stat().st_mode & 0o777) == oct(0o600)


def test_launch_through_the_daemon_and_verify(
    client: PlatformClient, platform: SimulatedPlatform, tmp_path: Path
) -> None:
    assert isinstance(client, Launcher)
    info = client.info()
    assert info["public_key"] == platform.public_key_bytes.hex()
    assert "runtime" in info["entries"]
    assert client.measurement("attest-probe") == platform.measurement("attest-probe")
    report_data = _report_data()
    process, doc = launch_probe(client, report_data, config={"k": "v"})
    assert process.wait(30) == 0
    process.close()
    # The verifier pins the published key file, not what the daemon said about itself.
    trust = TrustAnchors.from_data_dir(tmp_path / "data")
    policy = Policy(measurements=frozenset({client.measurement("attest-probe", config={"k": "v"})}))
    claims = verify_evidence(
        evidence_of(doc), policy, report_data=report_data, trust=trust, now=time.time()
    )
    assert claims.entry == "attest-probe"


def test_descriptors_travel_over_the_socket(client: PlatformClient) -> None:
    line = probe_line_on_passed_fd(client, _report_data())
    assert b'"passed_fds": 1' in line


def test_signals_and_exit_status_through_the_handle(client: PlatformClient) -> None:
    process, _ = launch_probe(client, _report_data(), "--hold")
    assert process.wait(0.01) is None
    assert process.returncode is None
    process.terminate()
    assert process.wait(30) == -signal.SIGTERM
    process.close()
    process, _ = launch_probe(client, _report_data(), "--hold")
    process.close()  # closing a running handle kills it
    assert process.returncode == -signal.SIGKILL


def test_a_launcher_that_goes_away_takes_its_process_with_it(server: PlatformServer) -> None:
    code = (
        "import os, sys\n"
        "from sealserve.attest.tee import PlatformClient\n"
        "c = PlatformClient(sys.argv[1]).open()\n"
        "p = c.launch('attest-probe', args=['00' * 64, '--hold'])\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(server.socket_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    )
    pid = int(result.stdout.strip())
    assert _wait_gone(pid), f"pid {pid} outlived its launcher"


def test_the_daemon_never_hands_out_evidence(server: PlatformServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(10)
        conn.connect(str(server.socket_path))
        send_message(conn, {"op": "evidence", "report_data": b64(bytes(64))})
        received = recv_message(conn)
    assert received is not None
    reply, _ = received
    assert reply == {"ok": False, "error": "unknown op 'evidence'"}


def test_bad_requests_are_refused_with_a_reason(client: PlatformClient) -> None:
    with pytest.raises(TeeError, match="entry must be one of"):
        client.launch("bash")
    with pytest.raises(TeeError, match="entry must be one of"):
        client.measurement("bash")


def test_evidence_from_another_platform_fails_against_the_pinned_key(
    client: PlatformClient, tmp_path: Path, frozen_package: Path
) -> None:
    report_data = _report_data()
    process, doc = launch_probe(client, report_data)
    process.close()
    with SimulatedPlatform(data_dir=tmp_path / "other", package_dir=frozen_package) as other:
        trust = other.trust_anchors()
    policy = Policy(measurements=frozenset({client.measurement("attest-probe")}))
    with pytest.raises(AttestationError):
        verify_evidence(
            evidence_of(doc), policy, report_data=report_data, trust=trust, now=time.time()
        )


def test_one_daemon_per_socket_and_stale_sockets_are_replaced(
    platform: SimulatedPlatform, socket_dir: Path
) -> None:
    path = socket_dir / "p.sock"
    with (
        PlatformServer(platform, socket_path=path),
        pytest.raises(TeeError, match="already serving"),
    ):
        PlatformServer(platform, socket_path=path).open()
    assert not path.exists()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on
    with PlatformServer(platform, socket_path=path), PlatformClient(path) as c:
        assert c.info()["ok"]
    path.write_text("not a socket")
    with pytest.raises(TeeError, match="not a socket"):
        PlatformServer(platform, socket_path=path).open()


def test_an_unreachable_daemon_says_how_to_start_one(socket_dir: Path) -> None:
    with pytest.raises(TeeError, match="attest platform serve"):
        PlatformClient(socket_dir / "nobody.sock").open()
