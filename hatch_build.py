"""Build hook: compile the ipc channel's hot path (``sealserve.ipc._ringcore``) from C.

It needs a C compiler and the Python headers (gcc and python3-dev on Debian).  Where either is
missing, or ``SEALSERVE_NO_EXTENSION=1`` is set, the build goes on without it and sealserve
uses the pure-Python ring, which behaves the same and passes the same conformance suite.

An editable install (``pip install -e .``, ``make install``) puts the module next to its
source, where the editable path finds it; a wheel carries it as a platform-specific file.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_SOURCE = Path("src/sealserve/ipc/_ringcore.c")
_MODULE = "sealserve/ipc/_ringcore"


class CompiledCoreHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("SEALSERVE_NO_EXTENSION") == "1":
            return
        source = Path(self.root) / _SOURCE
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        if version == "editable":
            target = source.with_name(f"_ringcore{suffix}")
            target.unlink(missing_ok=True)  # never leave a stale build to be imported
            if _compile(source, target):
                build_data["pure_python"] = False
                build_data["infer_tag"] = True
            return
        out_dir = Path(tempfile.mkdtemp(prefix="sealserve-build-"))
        target = out_dir / f"_ringcore{suffix}"
        if _compile(source, target):
            build_data["force_include"][str(target)] = f"{_MODULE}{suffix}"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True


def _compile(source: Path, target: Path) -> bool:
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    command = [
        *compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-fno-strict-aliasing",
        "-Wall",
        "-I",
        include,
        str(source),
        "-o",
        str(target),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        _warn(f"no C compiler ({exc}); using the pure-Python ipc ring")
        return False
    if done.returncode != 0:
        _warn(
            "could not compile the ipc ring's C core; using the pure-Python ring:\n"
            + done.stderr.strip()[-2000:]
        )
        return False
    return True


def _warn(message: str) -> None:
    print(f"sealserve build: {message}", file=sys.stderr)
