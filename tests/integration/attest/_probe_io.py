"""Helpers shared by the attest integration tests: run the attest-probe and read its line."""

from __future__ import annotations

import json
import os
from typing import Any

from sealserve.attest import Evidence
from sealserve.attest._wire import unb64
from sealserve.attest.tee import Launcher, MeasuredProcess


def launch_probe(
    launcher: Launcher, report_data: bytes, *extra: str, **kwargs: Any
) -> tuple[MeasuredProcess, dict[str, Any]]:
    """Launch attest-probe with its stdout on a pipe; return the process and its JSON line."""
    read_end, write_end = os.pipe()
    try:
        process = launcher.launch(
            "attest-probe", args=[report_data.hex(), *extra], stdout=write_end, **kwargs
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as out:
        line = out.readline()
    assert line, f"the probe printed nothing (exit status {process.wait(30)})"
    return process, json.loads(line)


def probe_line_on_passed_fd(launcher: Launcher, report_data: bytes) -> bytes:
    """Launch attest-probe with a pipe's write end handed over (``--out-fd``); return the line
    it wrote there, once it has exited with status 0."""
    read_end, write_end = os.pipe()
    try:
        process = launcher.launch(
            "attest-probe", args=[report_data.hex(), "--out-fd"], fds=[write_end]
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as out:
        line = out.readline()
    assert process.wait(30) == 0
    process.close()
    return line


def evidence_of(doc: dict[str, Any]) -> Evidence:
    return Evidence.from_bytes(unb64(doc["evidence"]))
