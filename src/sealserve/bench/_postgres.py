"""A throwaway PostgreSQL server for the fault benchmark (as ``scripts/with-postgres`` starts
one): ``initdb`` in a temporary directory, ``pg_ctl`` to start, restart and stop it, on a free
port of 127.0.0.1, trust authentication, no fsync.  As root the server runs as the
``postgres`` user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["ThrowawayPostgres", "postgres_bindir"]

_TIMEOUT_S: Final = 120


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, if PostgreSQL's server binaries are installed."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").is_file():
            return candidate
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class ThrowawayPostgres:
    """One PostgreSQL cluster in a temporary directory; ``url`` is its SQLAlchemy URL."""

    def __init__(self, *, database: str = "sealserve_faults") -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb); install postgresql")
        self.bindir = bindir
        self.database = database
        self.workdir = Path(tempfile.mkdtemp(prefix="sealserve-pg-"))
        self.workdir.chmod(0o755)
        self._root = os.geteuid() == 0
        if self._root:
            shutil.chown(self.workdir, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"
        self._started = False

    def _run(self, *args: str) -> None:
        command = " ".join(shlex.quote(a) for a in args)
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", command] if self._root else list(args)
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {(result.stderr or result.stdout)[-600:]}")

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.workdir / "data"), *args)

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )

    def start(self) -> ThrowawayPostgres:
        self._run(str(self.bindir / "initdb"), "-D", str(self.workdir / "data"), "-U",
                  "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")  # fmt: skip
        self._pg_ctl("-l", str(self.workdir / "server.log"), "-w", "-t", "60", "-o",
                     self._options(), "start")  # fmt: skip
        self._started = True
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", self.database)  # fmt: skip
        return self

    def restart(self) -> None:
        """A fast restart: every connection is dropped, the data stays."""
        # -l: the new server must not inherit our pipes (we would wait for them to close)
        self._pg_ctl("-l", str(self.workdir / "server.log"), "-w", "-t", "60", "-m", "fast",
                     "-o", self._options(), "restart")  # fmt: skip

    def close(self) -> None:
        if self._started:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._pg_ctl("-m", "immediate", "stop")
            self._started = False
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
