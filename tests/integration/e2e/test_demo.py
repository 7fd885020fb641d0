"""``make demo`` runs examples/demo.py: it must work, match plain onnxruntime and leave nothing.

The demo starts the whole stack (``sealserve up``), seals three real models, serves them and
stops the stack; it takes about a minute on the build machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo.py"


def _children_of(pid: int) -> set[int]:
    """Every live process whose parent chain reaches ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _sealserve_processes_under(root: Path) -> set[int]:
    """Live processes whose command line names ``root`` (the demo's fresh data directory)."""
    marker = str(root).encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker in fh.read():
                    found.add(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("sealserve")}


@pytest.mark.timeout(300)
def test_demo_matches_plain_onnxruntime_and_stops_its_stack(tmp_path: Path) -> None:
    shm_before = _shm()
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),  # the demo's work directory goes under tmp_path
        "COLUMNS": "160",
        "PYTHONUNBUFFERED": "1",
    }
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=DEMO.parents[1],
    )
    out = result.stdout
    assert result.returncode == 0, (out[-3000:], result.stderr[-3000:])
    # Each of the three models: sealed inference equals plain onnxruntime's.
    assert re.search(r"MobileNetV2.*top-5 classes \(sealed \| plain\)", out), out
    assert re.search(r"^\s*match: yes\.", out, re.MULTILINE), out
    assert re.search(r"P\(nsfw\) = [0-9.]+ sealed \| [0-9.]+ plain; match: yes", out), out
    assert re.search(
        r"cosine similarity [0-9.]+ sealed \| [0-9.]+ plain; embeddings match: yes", out
    )
    assert "NO" not in re.findall(r"match: (\w+)", out)
    assert "A burst of 12 concurrent requests" in out
    assert "A user without a grant sends a request" in out
    assert re.search(r"platform \(\S+ policy\): \d+ instances alive", out), out
    assert "sealserve up stopped with status 0" in out
    assert "all results match plain onnxruntime" in out
    assert "MISMATCH" not in out
    # Its stack is gone: no process runs from its data directory, no shared memory is left,
    # and its work directory was removed.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("sealserve-demo-")]
    assert _sealserve_processes_under(tmp_path) == set()
    assert _children_of(os.getpid()) == set()
    assert _shm() - shm_before == set()
