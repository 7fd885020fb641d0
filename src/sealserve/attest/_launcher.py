"""What an (untrusted) host needs from a TEE platform: launch a measured process, watch it.

Two implementations share these interfaces: :class:`~sealserve.attest.tee.SimulatedPlatform`
(embedded: the platform lives in this process) and :class:`~sealserve.attest.tee.PlatformClient`
(a platform daemon reached over a Unix socket).  The instance host codes against
:class:`Launcher` and works with either.
"""

from __future__ import annotations

import abc
import contextlib
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Self, runtime_checkable

__all__ = ["Launcher", "LocalProcess", "MeasuredProcess"]


@runtime_checkable
class MeasuredProcess(Protocol):
    """A process the platform launched; the platform reaps it."""

    @property
    def pid(self) -> int: ...

    @property
    def entry(self) -> str: ...

    @property
    def measurement(self) -> str:
        """The hex measurement its evidence carries."""
        ...

    @property
    def debug(self) -> bool: ...

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited (negative: killed by that signal), else None."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for exit; the exit status, or None if ``timeout`` passed first."""
        ...

    def send_signal(self, signum: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def close(self) -> None:
        """Kill it if still running, reap it and release the handle (idempotent)."""
        ...

    def __enter__(self) -> MeasuredProcess: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Launcher(Protocol):
    """Launches registered entries from a measured code snapshot."""

    def measurement(self, entry: str, *, config: Mapping[str, str] | None = None) -> str:
        """The measurement a launch of ``entry`` with ``config`` will carry."""
        ...

    def launch(
        self,
        entry: str,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        config: Mapping[str, str] | None = None,
        fds: Sequence[int] = (),
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        debug: bool = False,
    ) -> MeasuredProcess:
        """Start ``entry`` with ``args`` and ``env`` (both untrusted, not measured), the
        measured ``config``, and ``fds`` handed over (their numbers in the child are in
        ``SEALSERVE_PASSED_FDS``); ``stdin``/``stdout``/``stderr`` are descriptors to use
        (default: /dev/null for stdin, the platform's own for the others)."""
        ...


class LocalProcess(abc.ABC):
    """The part of a :class:`MeasuredProcess` that a local child process answers (its
    ``Popen``, or anything that behaves like one); a launcher's handle adds ``close``."""

    def __init__(self, popen: Any, *, entry: str, measurement: str, debug: bool) -> None:
        self._popen = popen
        self._entry = entry
        self._measurement = measurement
        self._debug = debug

    @property
    def pid(self) -> int:
        pid: int = self._popen.pid
        return pid

    @property
    def entry(self) -> str:
        return self._entry

    @property
    def measurement(self) -> str:
        return self._measurement

    @property
    def debug(self) -> bool:
        return self._debug

    @property
    def returncode(self) -> int | None:
        code: int | None = self._popen.poll()
        return code

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code: int | None = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return code

    def send_signal(self, signum: int) -> None:
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the process if it runs and release what the handle holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
