"""Measured templates: a launched entry that has paid its imports, from which launches fork.

Starting the runtime is a second or more of Python imports (numpy, onnxruntime, cryptography)
before it does anything; forking a process that has already imported them takes a few
milliseconds.  The platform therefore keeps, per (entry, launch config, debug flag), a
*template*: a process launched exactly as a launch of that entry is (the same code snapshot,
bootstrap, entry and measured config, so the same measurement), which imports the entry's
module, runs its ``prepare_template()`` hook (the runtime imports onnxruntime and the rest
there), and then only forks (:mod:`sealserve._forkserver`).

What a template is *not*: it never obtains evidence or a sealing key.  Its channel to the
platform carries fork requests only; it has no attestation channel at all.  Each launch that
forks from it gets a fresh attestation channel of its own from the platform (a new socket
pair, as a fresh launch does), answered with that launch's measurement; the child generates
its keys after the fork (the runtime's HPKE key pair is made in its ``main``), so no two
launches share a key, and a launch's evidence is only ever about its own keys.  Launch
arguments and environment are the launcher's, filtered exactly as for a fresh launch.

The analogue in hardware: Gramine forks an SGX process by creating a new enclave of the same
measurement and migrating its state over an attested channel; in a confidential VM the fork
happens inside the VM, whose launch measurement covers the template.  Here the simulated
platform is the one that launches the template and vouches for its children.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from sealserve._log import get_logger
from sealserve.attest._local import (
    PASSED_FDS_ENV,
    TEE_CONFIG_ENV,
    TEE_DEBUG_ENV,
    TEE_ENTRY_ENV,
    TEE_FD_ENV,
)
from sealserve.errors import TeeError

if TYPE_CHECKING:  # loaded by start_template: a verifier importing attest never needs it
    from sealserve._forkserver import ForkClient, ForkedProcess

__all__ = ["TEE_TEMPLATE_ENV", "Template", "TemplateKey", "TemplatePool"]

_log = get_logger(__name__)
#: Set (by the platform only: launchers cannot set ``SEALSERVE_TEE_*``) in a template.
TEE_TEMPLATE_ENV: Final = "SEALSERVE_TEE_TEMPLATE"
_STOP_GRACE_S: Final = 5.0

#: (entry, canonical JSON of the launch config, debug)
TemplateKey = tuple[str, str, bool]


class Template:
    """One running template (see the module docstring)."""

    def __init__(
        self,
        key: TemplateKey,
        popen: subprocess.Popen[bytes],
        client: ForkClient,
        *,
        measurement: str,
    ) -> None:
        self.key = key
        self.popen = popen
        self.client = client
        self.measurement = measurement
        self.forks = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None and not self.client.closed

    def fork(
        self,
        *,
        args: Sequence[str],
        env: Mapping[str, str],
        channel: int,
        fds: Sequence[int],
        stdin: int,
        stdout: int | None,
        stderr: int | None,
    ) -> ForkedProcess:
        """A launch of the template's entry: ``channel`` becomes its attestation channel and
        ``fds`` its passed descriptors (renumbered in the child, named in its environment)."""
        child_env = dict(env)
        # The child's own descriptor numbers are only known inside it: the bootstrap reads
        # them from the request (the channel first, then the passed ones).
        child_env.pop(TEE_FD_ENV, None)
        child_env.pop(PASSED_FDS_ENV, None)
        process = self.client.fork(
            list(args), env=child_env, stdio=(stdin, stdout, stderr), fds=[channel, *fds]
        )
        self.forks += 1
        return process

    def close(self) -> None:
        self.client.close()  # the template ends when its control socket closes
        try:
            self.popen.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(_STOP_GRACE_S)


class TemplatePool:
    """The platform's templates, at most ``limit`` (the least recently used goes first)."""

    def __init__(self, *, limit: int = 4) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.limit = limit
        self._lock = threading.Lock()
        self._templates: dict[TemplateKey, Template] = {}
        self._starting: set[TemplateKey] = set()
        self._closed = False

    @staticmethod
    def key(entry: str, config: Mapping[str, str], debug: bool) -> TemplateKey:
        return (entry, json.dumps(dict(config), sort_keys=True), bool(debug))

    def get(self, key: TemplateKey) -> Template | None:
        """The live template of ``key`` (a dead one is dropped)."""
        with self._lock:
            template = self._templates.get(key)
            if template is None:
                return None
            if not template.alive:
                del self._templates[key]
                dead: Template | None = template
            else:
                self._templates[key] = self._templates.pop(key)  # most recently used last
                return template
        if dead is not None:
            _log.event("platform.template_lost", entry=key[0], pid=dead.pid)
            with contextlib.suppress(OSError):
                dead.close()
        return None

    def begin(self, key: TemplateKey) -> bool:
        """Claim the start of ``key``'s template; ``False`` if one runs or is starting."""
        with self._lock:
            if self._closed or key in self._starting or key in self._templates:
                return False
            self._starting.add(key)
            return True

    def add(self, template: Template) -> None:
        evicted: list[Template] = []
        with self._lock:
            self._starting.discard(template.key)
            if self._closed:
                evicted.append(template)
            else:
                self._templates[template.key] = template
                while len(self._templates) > self.limit:
                    oldest = next(iter(self._templates))
                    evicted.append(self._templates.pop(oldest))
        for old in evicted:
            old.close()

    def abandon(self, key: TemplateKey) -> None:
        with self._lock:
            self._starting.discard(key)

    def describe(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {"entry": t.key[0], "pid": t.pid, "measurement": t.measurement, "forks": t.forks}
                for t in self._templates.values()
            ]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            templates = list(self._templates.values())
            self._templates.clear()
        for template in templates:
            template.close()


def start_template(
    key: TemplateKey,
    *,
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    measurement: str,
    stderr: int | None = None,
) -> Template:
    """Launch a template process (``command`` is the bootstrap's, as for a launch) and
    connect to its control socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    entry, config, debug = key
    child_env = dict(env)
    child_env.update(
        {
            TEE_TEMPLATE_ENV: "1",
            TEE_FD_ENV: str(theirs.fileno()),
            TEE_ENTRY_ENV: entry,
            TEE_CONFIG_ENV: config,
            TEE_DEBUG_ENV: "1" if debug else "0",
            PASSED_FDS_ENV: "",
        }
    )
    try:
        popen = subprocess.Popen(
            list(command),
            env=child_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=(theirs.fileno(),),
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        ours.close()
        raise TeeError(f"could not start a template of {entry!r}: {exc}") from exc
    finally:
        theirs.close()
    from sealserve._forkserver import ForkClient

    client = ForkClient(ours, name=f"template-{popen.pid}")
    _log.event("platform.template_started", entry=entry, pid=popen.pid, measurement=measurement)
    return Template(key, popen, client, measurement=measurement)


def devnull() -> int:
    """A descriptor on ``/dev/null`` (the caller closes it)."""
    return os.open(os.devnull, os.O_RDWR)
