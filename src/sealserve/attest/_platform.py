"""The TEE platform: the measured launcher, simulated or on a hardware backend.

A :class:`SimulatedPlatform` takes one snapshot of the sealserve code when it opens, and is the
only way to obtain evidence: it launches registered entries from that snapshot and answers
evidence (and sealing-key) requests on each launched process's private channel, with that
process's measurement.  By default it plays the hardware for development and CI: it holds the
platform's Ed25519 key and signs simulated evidence.  Given a hardware ``backend``
(:class:`~sealserve.attest._backends.LaunchBackend`: configfs-tsm, a TPM, an Azure vTPM) it is
a confidential VM's measured launcher instead: it extends each entry's measurement into the
hardware's launch register before the entry's first launch, and answers with the hardware's
evidence wrapped with the launch log (``sealserve-launch/1``, see
:mod:`sealserve.attest._launch_log`); it then holds no signing key at all.

Run it embedded (tests, a command that is its own launcher) or behind a Unix socket
(:class:`~sealserve.attest.tee.PlatformServer`), so the untrusted host never holds the key.  See
docs/threat-model.md for what this does and does not protect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve._resource import Resource, ResourceState
from sealserve.attest import _measure
from sealserve.attest._backends import LaunchBackend
from sealserve.attest._entries import TEMPLATE_ENTRIES, entry_module
from sealserve.attest._evidence import FORMAT_LAUNCH, REPORT_DATA_BYTES, Evidence
from sealserve.attest._launch_log import LaunchEvent, LaunchEvidence, bind_report_data
from sealserve.attest._launcher import LocalProcess
from sealserve.attest._local import (
    PASSED_FDS_ENV,
    TEE_CONFIG_ENV,
    TEE_DEBUG_ENV,
    TEE_ENTRY_ENV,
    TEE_FD_ENV,
)
from sealserve.attest._measure import BOOT_COMMAND, CodeSnapshot
from sealserve.attest._platform_key import (
    load_or_create_platform_key,
    load_or_create_sealing_root,
)
from sealserve.attest._policy import TCB_STATUSES
from sealserve.attest._sealing import check_purpose, derive_sealing_key
from sealserve.attest._simulated_evidence import sign_simulated
from sealserve.attest._templates import Template, TemplatePool, devnull, start_template
from sealserve.attest._trust import TrustAnchors
from sealserve.attest._wire import MAX_FDS, b64, recv_message, send_message, unb64
from sealserve.crypto import Identity
from sealserve.errors import TeeError

if TYPE_CHECKING:  # the fork server is loaded by the first template, never by a verifier
    from sealserve._forkserver import ForkedProcess

__all__ = ["LaunchedProcess", "SimulatedPlatform"]

_log = get_logger(__name__)
_RESERVED_ENV_PREFIX: Final = "SEALSERVE_TEE_"
_CLOSE_GRACE_S: Final = 5.0
#: The only launcher variables a launched process gets.  The environment is the untrusted
#: host's and is not measured, so nothing the measured code decides may depend on it: not its
#: secrets (a KeyService once read its master key from a variable), not where it loads code
#: from (``LD_*``, ``PYTHON*``, ``OPENSSL_*``, glibc's unsafe list), not onnxruntime's
#: switches (``ORT_LOAD_CONFIG_FROM_MODEL``).  The locale is kept for messages; ``PATH`` is
#: always the platform's default.
ALLOWED_ENV: Final = frozenset({"LANG", "LC_ALL", "LC_CTYPE"})


class SimulatedPlatform(Resource):
    """The simulated TEE (see the module docstring); a context manager.

    ``data_dir`` holds ``tee/platform.key`` (created on first open, 0600) and the snapshot;
    ``tcb_status`` is what every evidence reports (set another to test policies);
    ``package_dir`` is the sealserve package to snapshot (default: the installed one).
    """

    resource_name = "the platform"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str],
        tcb_status: str = "UpToDate",
        package_dir: str | os.PathLike[str] | None = None,
        python: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_processes: int = 64,
        backend: LaunchBackend | None = None,
        templates: bool = True,
    ) -> None:
        if backend is not None and not isinstance(backend, LaunchBackend):
            raise TypeError(f"backend must be a LaunchBackend, got {type(backend).__name__}")
        if tcb_status not in TCB_STATUSES:
            raise ValueError(
                f"tcb_status must be one of {sorted(TCB_STATUSES)}, got {tcb_status!r}"
            )
        if max_processes < 1:
            raise ValueError(f"max_processes must be >= 1, got {max_processes!r}")
        super().__init__()
        self._data_dir = Path(data_dir)
        self._tcb_status = tcb_status
        self._package_dir = Path(package_dir) if package_dir else None
        self._python = python or sys.executable
        self._clock = clock
        self._max_processes = max_processes
        self._lock = threading.Lock()
        self._processes: set[LaunchedProcess] = set()
        self._key_public = b""
        self._snapshot: CodeSnapshot | None = None
        self._key: Identity | None = None
        self._sealing_root: bytes | None = None
        self._backend = backend
        # The launch log of a hardware backend, and the lock that keeps it and the register in
        # step with the evidence taken over them.
        self._events: list[LaunchEvent] = []
        self._launch_lock = threading.Lock()
        # Measured templates (see _templates): launches of an entry that has one fork from it.
        self._templates_on = templates
        self._templates = TemplatePool()

    # -- lifecycle -------------------------------------------------------------------------

    def _open(self) -> None:
        """Snapshot the code; load (or create) the platform key and sealing root, or open the
        hardware backend (its launch log so far)."""
        with self._lock:
            if self._backend is None:
                key = load_or_create_platform_key(self._data_dir)
                self._sealing_root = load_or_create_sealing_root(self._data_dir)
                self._key = key
                self._key_public = key.public_key_bytes
            else:
                self._events = self._backend.open()
            package_dir = self._package_dir or _measure.installed_package_dir()
            try:
                self._snapshot = CodeSnapshot.create(package_dir, parent=self._data_dir / "tee")
            except BaseException:
                if self._backend is not None:
                    self._backend.close()
                raise
        _log.event(
            "platform.opened",
            files=self._snapshot.file_count,
            tcb_status=self._tcb_status,
            backend=self.backend_name,
        )

    def _close(self) -> None:
        """Kill and reap every process still running, and delete the snapshot."""
        self._templates.close()
        with self._lock:
            if self._key is None and self._snapshot is None:
                return  # never opened
            processes = list(self._processes)
        for process in processes:
            process.close()
        if self._snapshot is not None:
            self._snapshot.remove()
        if self._backend is not None:
            self._backend.close()
        self._key = None
        self._sealing_root = None
        _log.event("platform.closed")

    # -- what verifiers and launchers ask --------------------------------------------------

    @property
    def public_key_bytes(self) -> bytes:
        """The platform's raw Ed25519 public key (also published in ``tee/platform.pub``)."""
        self._check_open()
        if self._backend is not None:
            raise TeeError(
                f"the platform runs on the {self._backend.name} backend and has no simulated "
                "key: verifiers trust the hardware's roots instead"
            )
        return self._key_public

    @property
    def backend_name(self) -> str:
        """``simulated``, or the hardware backend's name."""
        return "simulated" if self._backend is None else self._backend.name

    @property
    def launch_register(self) -> str | None:
        """The register a hardware backend extends (None when simulated)."""
        return None if self._backend is None else self._backend.register

    def launch_log(self) -> tuple[LaunchEvent, ...]:
        """The launch events extended so far (empty when simulated)."""
        with self._launch_lock:
            return tuple(self._events)

    @property
    def tcb_status(self) -> str:
        return self._tcb_status

    def trust_anchors(self) -> TrustAnchors:
        """Anchors that trust this platform (tests; real verifiers pin ``platform.pub``)."""
        return TrustAnchors(simulated_platform_keys=frozenset({self.public_key_bytes}))

    def measurement(self, entry: str, *, config: Mapping[str, str] | None = None) -> str:
        """The measurement a launch of ``entry`` with ``config`` carries."""
        return self._snapshot_or_raise().measurement(entry, config=_check_config(config))

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
    ) -> LaunchedProcess:
        """Start ``entry`` from the snapshot (see :class:`~sealserve.attest.tee.Launcher`)."""
        snapshot = self._snapshot_or_raise()
        module = entry_module(entry)
        cfg = _check_config(config)
        argv = _check_args(args)
        child_env = _child_env(env)
        passed = _check_fds(fds)
        measurement = snapshot.measurement(entry, config=cfg)
        if self._backend is not None:
            if debug:
                raise TeeError(
                    "debug launches exist only on the simulated platform: a confidential VM's "
                    "debug state is the VM's, not a process's"
                )
            self._record_launch(LaunchEvent(entry=entry, measurement=bytes.fromhex(measurement)))
        key = TemplatePool.key(entry, cfg, debug)
        template = self._templates.get(key) if self._templates_on else None
        child_env.update(
            {
                TEE_ENTRY_ENV: entry,
                TEE_CONFIG_ENV: json.dumps(cfg, sort_keys=True),
                TEE_DEBUG_ENV: "1" if debug else "0",
                PASSED_FDS_ENV: ",".join(str(fd) for fd in passed),
            }
        )
        if template is not None:  # fork from the template (outside the lock: a round trip)
            self._check_open()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with theirs:
                forked = self._fork(template, argv, child_env, theirs, passed, stdin, stdout,
                                    stderr)  # fmt: skip
            if forked is not None:
                with self._lock:
                    process = LaunchedProcess(
                        self, forked, ours, entry=entry, measurement=measurement, debug=debug
                    )
                    self._processes.add(process)
                _log.event("platform.launched", entry=entry, pid=forked.pid,
                           measurement=measurement, debug=debug, template=template.pid)  # fmt: skip
                return process
            ours.close()
        with self._lock:
            self._check_open()
            if len(self._processes) >= self._max_processes:
                raise TeeError(f"the platform already runs {self._max_processes} processes")
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            child_env[TEE_FD_ENV] = str(theirs.fileno())
            try:
                popen = subprocess.Popen(
                    [
                        self._python,
                        "-I",
                        "-B",
                        "-c",
                        BOOT_COMMAND,
                        str(snapshot.root),
                        module,
                        *argv,
                    ],
                    env=child_env,
                    cwd=snapshot.root,
                    stdin=subprocess.DEVNULL if stdin is None else stdin,
                    stdout=stdout,
                    stderr=stderr,
                    pass_fds=(theirs.fileno(), *passed),
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                raise TeeError(f"could not launch {entry!r}: {exc}") from exc
            finally:
                theirs.close()
            process = LaunchedProcess(
                self, popen, ours, entry=entry, measurement=measurement, debug=debug
            )
            self._processes.add(process)
        _log.event(
            "platform.launched", entry=entry, pid=popen.pid, measurement=measurement, debug=debug
        )
        if self._templates_on and entry in TEMPLATE_ENTRIES:
            self._prepare_in_background(entry, cfg, debug)
        return process

    # -- templates -------------------------------------------------------------------------

    def prepare(
        self, entry: str, *, config: Mapping[str, str] | None = None, debug: bool = False
    ) -> None:
        """Start a template of ``entry`` with ``config`` (in the background) so that its
        launches fork from it (see :mod:`sealserve.attest._templates`); nothing if one runs
        or starts already, or if templates are off."""
        entry_module(entry)
        if self._templates_on:
            self._prepare_in_background(entry, _check_config(config), debug)

    def templates(self) -> list[dict[str, object]]:
        """The running templates: entry, pid, measurement, launches forked."""
        return self._templates.describe()

    def _prepare_in_background(self, entry: str, cfg: dict[str, str], debug: bool) -> None:
        key = TemplatePool.key(entry, cfg, debug)
        if not self._templates.begin(key):
            return

        def start() -> None:
            try:
                snapshot = self._snapshot_or_raise()
                measurement = snapshot.measurement(entry, config=cfg)
                if self._backend is not None:
                    if debug:
                        raise TeeError("debug launches exist only on the simulated platform")
                    self._record_launch(
                        LaunchEvent(entry=entry, measurement=bytes.fromhex(measurement))
                    )
                template = start_template(
                    key,
                    command=[self._python, "-I", "-B", "-c", BOOT_COMMAND, str(snapshot.root),
                             entry_module(entry)],
                    env=_child_env({}),
                    cwd=str(snapshot.root),
                    measurement=measurement,
                )  # fmt: skip
            except (TeeError, OSError, ValueError) as exc:
                self._templates.abandon(key)
                _log.event("platform.template_failed", level=logging.WARNING, entry=entry,
                           error=type(exc).__name__)  # fmt: skip
                return
            self._templates.add(template)

        threading.Thread(target=start, name=f"template-{entry}", daemon=True).start()

    def _fork(
        self,
        template: Template,
        argv: list[str],
        env: dict[str, str],
        channel: socket.socket,
        passed: tuple[int, ...],
        stdin: int | None,
        stdout: int | None,
        stderr: int | None,
    ) -> ForkedProcess | None:
        """A launch forked from ``template``, or ``None`` (the caller launches afresh)."""
        null = devnull() if stdin is None else None
        fd_in = stdin if stdin is not None else null
        assert fd_in is not None
        try:
            return template.fork(
                args=argv,
                env=env,
                channel=channel.fileno(),
                fds=passed,
                stdin=fd_in,
                stdout=stdout,
                stderr=stderr,
            )
        except (OSError, ValueError) as exc:
            _log.event("platform.template_fork_failed", level=logging.WARNING,
                       entry=template.key[0], error=type(exc).__name__)  # fmt: skip
            return None
        finally:
            if null is not None:
                os.close(null)

    def issue_unlaunched_evidence(
        self,
        entry: str,
        report_data: bytes,
        *,
        config: Mapping[str, str] | None = None,
        debug: bool = False,
    ) -> Evidence:
        """Evidence for ``entry`` *without launching it*: for tests and in-process tools only.

        The caller plays the measured code.  Only whoever holds the platform (and so its key)
        can call this; an untrusted host reaching a platform daemon cannot.
        """
        measurement = self.measurement(entry, config=config)
        return self._issue(entry, measurement, bytes(report_data), debug=debug)

    def unlaunched_sealing_key(
        self,
        entry: str,
        purpose: str,
        *,
        config: Mapping[str, str] | None = None,
        debug: bool = False,
    ) -> bytes:
        """The sealing key a launch of ``entry`` with ``config`` gets for ``purpose``, *without
        launching it*: for tests and in-process tools only (see
        :meth:`issue_unlaunched_evidence`)."""
        return self._sealing_key(self.measurement(entry, config=config), purpose, debug=debug)

    # -- internals -------------------------------------------------------------------------

    def _record_launch(self, event: LaunchEvent) -> None:
        """Extend the launch register with ``event`` unless this boot's log has it already."""
        assert self._backend is not None
        with self._launch_lock:
            if event in self._events:
                return
            self._backend.extend(event)
            self._events.append(event)
        _log.event(
            "platform.measured_launch",
            entry=event.entry,
            measurement=event.measurement.hex(),
            register=self._backend.register,
            events=len(self._events),
        )

    def _sealing_key(self, measurement: str, purpose: str, *, debug: bool) -> bytes:
        root = self._sealing_root
        if root is None and self._backend is not None and self.state is ResourceState.OPENED:
            root = self._sealing_root = self._backend.sealing_root()
        if root is None:
            raise TeeError("the platform is closed")
        return derive_sealing_key(
            root, measurement=measurement, purpose=check_purpose(purpose), debug=debug
        )

    def _issue(self, entry: str, measurement: str, report_data: bytes, *, debug: bool) -> Evidence:
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError(
                f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(report_data)}"
            )
        if self._backend is not None:
            return self._issue_launch(entry, measurement, report_data)
        key = self._key
        if key is None:
            raise TeeError("the platform is closed")
        return sign_simulated(
            key,
            measurement=bytes.fromhex(measurement),
            report_data=report_data,
            debug=debug,
            tcb_status=self._tcb_status,
            entry=entry,
            issued_at=int(self._clock.time()),
        )

    def _issue_launch(self, entry: str, measurement: str, report_data: bytes) -> Evidence:
        """The hardware's evidence for a launched process, wrapped with the launch log.

        Under the launch lock, so the log it carries is the one the register holds."""
        assert self._backend is not None
        if self.state is not ResourceState.OPENED:
            raise TeeError("the platform is closed")
        event = LaunchEvent(entry=entry, measurement=bytes.fromhex(measurement))
        bound = bind_report_data(report_data, entry=entry, measurement=event.measurement)
        with self._launch_lock:
            if event not in self._events:
                raise TeeError(f"{entry} was not launched by this platform")
            events = tuple(self._events)
            inner = self._backend.evidence(bound)
        wrapper = LaunchEvidence(
            platform=inner.to_bytes(),
            register=self._backend.register,
            events=events,
            entry=entry,
            measurement=event.measurement,
            report_data=report_data,
        )
        return Evidence(
            format=FORMAT_LAUNCH,
            measurement=event.measurement,
            report_data=report_data,
            raw=wrapper.to_raw(),
            debug=inner.debug,
            tcb_status=inner.tcb_status,
        )

    def _forget(self, process: LaunchedProcess) -> None:
        with self._lock:
            self._processes.discard(process)

    def _snapshot_or_raise(self) -> CodeSnapshot:
        self._check_open()
        assert self._snapshot is not None
        return self._snapshot

    def _check_open(self) -> None:
        self._check_opened()

    def __repr__(self) -> str:
        return f"SimulatedPlatform(data_dir={str(self._data_dir)!r}, state={self.state.value})"


class LaunchedProcess(LocalProcess):
    """A process :class:`SimulatedPlatform` launched, and the server of its attestation
    channel (a thread that answers until the process exits or the handle closes)."""

    def __init__(
        self,
        platform: SimulatedPlatform,
        popen: subprocess.Popen[bytes] | ForkedProcess,
        channel: socket.socket,
        *,
        entry: str,
        measurement: str,
        debug: bool,
    ) -> None:
        super().__init__(popen, entry=entry, measurement=measurement, debug=debug)
        self._platform = platform
        self._channel = channel
        self._closed = False
        self._close_lock = threading.Lock()
        self._server = threading.Thread(
            target=self._serve_channel, name=f"tee-channel-{popen.pid}", daemon=True
        )
        self._server.start()

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._popen.poll() is None:
            self.kill()
        self._popen.wait(_CLOSE_GRACE_S)
        if not isinstance(self._popen, subprocess.Popen):  # a ForkedProcess holds descriptors
            self._popen.close()
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_RDWR)
        self._server.join(_CLOSE_GRACE_S)
        self._channel.close()
        self._platform._forget(self)

    def _serve_channel(self) -> None:
        while True:
            try:
                received = recv_message(self._channel)
            except ValueError:
                self._reply({"ok": False, "error": "malformed request"})
                continue
            except OSError:
                return
            if received is None:
                return
            request, _ = received
            op = request.get("op")
            if op == "sealing_key":
                self._reply_sealing_key(request.get("purpose"))
                continue
            if op != "evidence":
                self._reply({"ok": False, "error": f"unknown op {op!r}"})
                continue
            try:
                report_data = unb64(request.get("report_data"))
                evidence = self._platform._issue(
                    self._entry, self._measurement, report_data, debug=self._debug
                )
            except (ValueError, TeeError) as exc:
                self._reply({"ok": False, "error": str(exc)})
                continue
            _log.event("platform.evidence", level=logging.DEBUG, entry=self._entry, pid=self.pid)
            self._reply({"ok": True, "evidence": b64(evidence.to_bytes())})

    def _reply_sealing_key(self, purpose: object) -> None:
        """The sealing key of this process's measurement for ``purpose`` (EGETKEY's analogue:
        only on this process's own channel, so only for its own measurement)."""
        try:
            key = self._platform._sealing_key(
                self._measurement, check_purpose(purpose), debug=self._debug
            )
        except (ValueError, TeeError) as exc:
            self._reply({"ok": False, "error": str(exc)})
            return
        _log.event("platform.sealing_key", level=logging.DEBUG, entry=self._entry, pid=self.pid)
        self._reply({"ok": True, "key": b64(key)})

    def _reply(self, message: Mapping[str, object]) -> None:
        with contextlib.suppress(OSError):
            send_message(self._channel, message)

    def __repr__(self) -> str:
        return (
            f"LaunchedProcess(entry={self._entry!r}, pid={self.pid}, "
            f"returncode={self.returncode!r})"
        )


def _check_config(config: Mapping[str, str] | None) -> dict[str, str]:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping of str to str, got {type(config).__name__}")
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"config must map str to str; got {key!r}: {value!r}")
    return dict(config)


def _check_args(args: Sequence[str]) -> list[str]:
    if isinstance(args, str):
        raise TypeError("args must be a sequence of strings, not one string")
    out = list(args)
    for arg in out:
        if not isinstance(arg, str) or "\x00" in arg:
            raise ValueError(f"args must be strings without NUL; got {arg!r}")
    return out


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The launcher's environment narrowed to :data:`ALLOWED_ENV`, with the default ``PATH``;
    the names of what was dropped are logged (never the values)."""
    out: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env must map str to str; got {key!r}: {value!r}")
        if key in ALLOWED_ENV:
            out[key] = value
        elif key != "PATH" and not key.startswith(_RESERVED_ENV_PREFIX) and key != PASSED_FDS_ENV:
            dropped.append(key)  # the platform alone sets its own variables: not worth a line
    if dropped:
        _log.event("platform.env_dropped", level=logging.WARNING, names=sorted(dropped)[:32])
    out["PATH"] = os.defpath
    return out


def _check_fds(fds: Sequence[int]) -> tuple[int, ...]:
    out = tuple(fds)
    if len(out) > MAX_FDS:
        raise ValueError(f"at most {MAX_FDS} descriptors may be passed, got {len(out)}")
    for fd in out:
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 3:
            raise ValueError(f"fds must be open descriptors >= 3, got {fd!r}")
        try:
            os.fstat(fd)
        except OSError:
            raise ValueError(f"fd {fd} is not open") from None
    return out
