"""Launch the ``keyservice`` entry through a platform and wait until it listens.

The launcher (an embedded :class:`~sealserve.attest.SimulatedPlatform` or a
:class:`~sealserve.attest.PlatformClient` to a daemon) is the untrusted host's view: it passes
the unmeasured arguments, the measured config (:func:`measured_config`), and reads the ready
line the service prints on its stdout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

from sealserve.attest import Launcher, MeasuredProcess
from sealserve.config import KeyServiceSettings
from sealserve.errors import KeyServiceError
from sealserve.keyservice._main import measured_config

__all__ = ["LaunchedKeyService", "launch_args", "launch_keyservice"]


@dataclasses.dataclass(frozen=True)
class LaunchedKeyService:
    """A running KeyService: its process handle and what its ready line said."""

    process: MeasuredProcess
    url: str
    keyservice_id: str
    database: str

    @property
    def measurement(self) -> str:
        return self.process.measurement

    def stop(self, *, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait for the graceful shutdown, release the handle; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process.close()
        return code


def launch_args(
    settings: KeyServiceSettings,
    *,
    data_dir: Path,
    platform_key: Path | None = None,
    log_level: str = "INFO",
) -> list[str]:
    """The (unmeasured) command line of the ``keyservice`` entry for ``settings``."""
    args = [
        "--data-dir", str(Path(data_dir).resolve()),
        "--host", settings.host,
        "--port", str(settings.port),
        "--max-body-bytes", str(settings.max_body_bytes),
        "--max-outstanding-challenges", str(settings.max_outstanding_challenges),
        "--rate-limit-per-s", repr(float(settings.rate_limit_per_s)),
        "--rate-limit-burst", str(settings.rate_limit_burst),
        "--log-level", log_level,
    ]  # fmt: skip
    if settings.db_url:
        args += ["--db", settings.db_url]
    if settings.master_key_file:
        args += ["--master-key-file", str(Path(settings.master_key_file).resolve())]
    if platform_key is not None:
        args += ["--platform-key", str(Path(platform_key).resolve())]
    return args


def launch_keyservice(
    launcher: Launcher,
    settings: KeyServiceSettings,
    *,
    data_dir: Path,
    platform_key: Path | None = None,
    log_level: str = "INFO",
    stderr: int | None = None,
    ready_timeout_s: float = 60.0,
) -> LaunchedKeyService:
    """Launch the KeyService and return once it accepts connections."""
    read_fd, write_fd = os.pipe()
    try:
        process = launcher.launch(
            "keyservice",
            args=launch_args(
                settings, data_dir=data_dir, platform_key=platform_key, log_level=log_level
            ),
            config=measured_config(settings),
            stdout=write_fd,
            stderr=stderr,
        )
    finally:
        os.close(write_fd)
    try:
        ready = _read_ready(read_fd, process, ready_timeout_s)
    finally:
        os.close(read_fd)
    if ready is None:
        code = process.wait(5)
        process.close()
        raise KeyServiceError(
            f"the KeyService exited before it was ready (status {code}); see its log"
        )
    return LaunchedKeyService(
        process=process,
        url=str(ready["url"]),
        keyservice_id=str(ready["keyservice_id"]),
        database=str(ready["database"]),
    )


def _read_ready(fd: int, process: MeasuredProcess, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buffer += chunk
            if b"\n" in buffer:
                doc = json.loads(buffer.split(b"\n", 1)[0])
                return doc if isinstance(doc, dict) else None
        elif process.wait(0) is not None:
            return None
    return None
