"""No measured process outlives its platform, even when the launcher is SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

_LAUNCHER = """
import sys, time
from pathlib import Path
from sealserve.attest.tee import SimulatedPlatform
platform = SimulatedPlatform(data_dir=Path(sys.argv[1]), package_dir=Path(sys.argv[2]))
platform.open()
process = platform.launch("attest-probe", args=["00" * 64, "--hold"])
print(process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_child_ends_when_its_launcher_is_killed(tmp_path: Path, frozen_package: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(tmp_path / "data"), str(frozen_package)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdout is not None
        child = int(launcher.stdout.readline())
        assert '"evidence"' in launcher.stdout.readline()  # the probe attested and now holds
        assert _alive(child)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(30)
        deadline = time.monotonic() + 30  # a bound on waiting, not a performance assertion
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the measured child outlived its killed launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if launcher.stdout is not None:
            launcher.stdout.close()
