"""Launch entries as Gramine SGX enclaves: ``gramine-sgx <entry>`` from signed manifests.

With SGX the enclave is the process (:mod:`sealserve.attest._gramine`), so nothing outside it
measures or vouches for anything: :class:`GramineLauncher` only starts ``gramine-sgx`` on the
manifest of an entry, signed beforehand (``sealserve attest gramine-manifest``, then
``gramine-manifest`` and ``gramine-sgx-sign``), in a directory holding
``<entry>.manifest.sgx`` and ``<entry>.sig``.  It is a :class:`~sealserve.attest.tee.Launcher`:

* :meth:`~GramineLauncher.measurement` is MRENCLAVE, read from the SIGSTRUCT in
  ``<entry>.sig`` (ENCLAVEHASH, 32 bytes at offset 960); the measured launch config is the one
  the manifest fixes (``loader.env.SEALSERVE_TEE_CONFIG``), and asking for another is refused;
* :meth:`~GramineLauncher.launch` passes the (unmeasured) arguments in
  ``SEALSERVE_ENTRY_ARGS``, a variable the manifest passes through (its ``loader.argv`` is
  fixed: the host cannot choose the module), and no descriptor: an enclave inherits none, so
  the instance host hands the runtime named sockets (``passes_fds`` is False).
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from sealserve._log import get_logger
from sealserve.attest._entries import entry_module
from sealserve.attest._launcher import LocalProcess
from sealserve.errors import TeeError

__all__ = ["ENTRY_ARGS_ENV", "GramineLauncher", "GramineProcess", "mrenclave_of_sigstruct"]

#: The unmeasured arguments of an entry launched in an enclave (JSON list of strings).
ENTRY_ARGS_ENV: Final = "SEALSERVE_ENTRY_ARGS"
#: SIGSTRUCT (Intel SDM vol. 3D, 38.13): ENCLAVEHASH at byte 960.
_ENCLAVEHASH: Final = slice(960, 992)
_SIGSTRUCT_BYTES: Final = 1808
_KEEP_ENV: Final = ("LANG", "LC_ALL", "LC_CTYPE", "PATH", "HOME")
_CLOSE_GRACE_S: Final = 5.0
_log = get_logger(__name__)


def mrenclave_of_sigstruct(sig: bytes) -> bytes:
    """MRENCLAVE (ENCLAVEHASH) of a SIGSTRUCT (``gramine-sgx-sign``'s ``.sig`` file)."""
    if len(sig) != _SIGSTRUCT_BYTES:
        raise TeeError(f"a SIGSTRUCT is {_SIGSTRUCT_BYTES} bytes, got {len(sig)}")
    return bytes(sig[_ENCLAVEHASH])


class GramineLauncher:
    """Starts entries as enclaves from the signed manifests in ``manifests`` (see the module
    docstring); ``command`` is ``gramine-sgx`` (or a stand-in with its interface)."""

    #: An enclave inherits no descriptor of its launcher.
    passes_fds: Final = False

    def __init__(
        self, manifests: str | os.PathLike[str], *, command: Sequence[str] = ("gramine-sgx",)
    ) -> None:
        self._dir = Path(manifests)
        if not self._dir.is_dir():
            raise TeeError(f"no Gramine manifests directory at '{self._dir}'")
        if not command:
            raise ValueError("command must name the gramine-sgx program")
        self._command = tuple(command)

    def __enter__(self) -> GramineLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def manifest(self, entry: str) -> Mapping[str, Any]:
        """The signed manifest of ``entry`` (TOML)."""
        entry_module(entry)
        path = self._dir / f"{entry}.manifest.sgx"
        try:
            return tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TeeError(f"cannot read the Gramine manifest '{path}': {exc}") from exc

    def launch_config(self, entry: str) -> dict[str, str]:
        """The measured launch config the manifest of ``entry`` fixes."""
        env = self.manifest(entry).get("loader", {}).get("env", {})
        text = env.get("SEALSERVE_TEE_CONFIG", "{}")
        try:
            config = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise TeeError(f"the manifest of {entry} fixes no valid launch config") from exc
        if not isinstance(config, dict):
            raise TeeError(f"the manifest of {entry} fixes no valid launch config")
        return {str(k): str(v) for k, v in config.items()}

    def measurement(self, entry: str, *, config: Mapping[str, str] | None = None) -> str:
        """MRENCLAVE of ``entry``'s signed manifest; ``config`` must be the one it fixes."""
        self._check_config(entry, config)
        path = self._dir / f"{entry}.sig"
        try:
            return mrenclave_of_sigstruct(path.read_bytes()).hex()
        except OSError as exc:
            raise TeeError(f"cannot read the SIGSTRUCT '{path}': {exc}") from exc

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
    ) -> GramineProcess:
        """Start ``entry`` in its enclave (see the module docstring)."""
        if fds:
            raise TeeError(
                "a Gramine enclave inherits no descriptors: hand it named sockets instead "
                "(the runtime's --ipc-socket)"
            )
        if debug:
            raise TeeError("a debug enclave is a manifest of its own (sgx.debug = true)")
        measurement = self.measurement(entry, config=config)
        child_env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        child_env.update(dict(env or {}))
        child_env[ENTRY_ARGS_ENV] = json.dumps([str(a) for a in args])
        try:
            popen = subprocess.Popen(
                [*self._command, entry],
                cwd=self._dir,
                env=child_env,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=stdout,
                stderr=stderr,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise TeeError(f"could not start {self._command[0]} for {entry!r}: {exc}") from exc
        _log.event("gramine.launched", entry=entry, pid=popen.pid, mrenclave=measurement)
        return GramineProcess(popen, entry=entry, measurement=measurement)

    def _check_config(self, entry: str, config: Mapping[str, str] | None) -> None:
        if config is None:
            return
        fixed = self.launch_config(entry)
        if dict(config) != fixed:
            raise TeeError(
                f"the signed manifest of {entry} fixes another launch config than the one "
                "asked for: sign a manifest with this config (sealserve attest gramine-manifest "
                "--config ...)"
            )


class GramineProcess(LocalProcess):
    """An enclave :class:`GramineLauncher` started (a
    :class:`~sealserve.attest.tee.MeasuredProcess`)."""

    def __init__(self, popen: subprocess.Popen[bytes], *, entry: str, measurement: str) -> None:
        super().__init__(popen, entry=entry, measurement=measurement, debug=False)

    def close(self) -> None:
        if self._popen.poll() is None:
            self.terminate()
            if self.wait(_CLOSE_GRACE_S) is None:
                self.kill()
                self._popen.wait()

    def __repr__(self) -> str:
        return f"GramineProcess(entry={self._entry!r}, pid={self.pid})"
