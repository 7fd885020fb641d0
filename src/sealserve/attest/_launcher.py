"""What an (untrusted) host needs from a TEE platform: launch a measured process, watch it.

Two implementations share these interfaces: :class:`~sealserve.attest.tee.SimulatedPlatform`
(embedded: the platform lives in this process) and :class:`~sealserve.attest.tee.PlatformClient`
(a platform daemon reached over a Unix socket).  The instance host codes against
:class:`Launcher` and works with either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Launcher", "MeasuredProcess"]


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
