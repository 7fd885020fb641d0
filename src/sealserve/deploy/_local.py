"""Everything ``sealserve up`` runs on one machine, in the order it starts it.

1. the simulated TEE's **platform daemon** (``sealserve attest platform serve``, a process of
   its own: it holds the platform key, which the untrusted host never does), with its key in
   ``<data-dir>/tee/``;
2. the **KeyService**, launched through the daemon so it can attest (SQLite in
   ``<data-dir>/keyservice/``);
3. the **local platform** (instances launched on demand, their runtimes through the daemon,
   pinned to that KeyService) and the **gateway** in front of it, in this process.

Every pin is asked of the daemon (measured from the code snapshot it took at start), so what
is printed is what runs.  Closing stops them in the reverse order; no process and no shared
memory is left behind.

::

    with LocalDeployment(DeploymentOptions(data_dir=path)) as up:   # background thread
        print(up.info.gateway_url, up.info.runtime_measurement)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry

from sealserve._health import Health
from sealserve._lifeline import tie_to_this_process
from sealserve._log import get_logger
from sealserve._resource import ResourceState
from sealserve._tls import TlsFiles, make_local_ca
from sealserve.attest import (
    Policy,
    ReferenceValues,
    TpmAnchors,
    TpmReference,
    TrustAnchors,
    read_platform_public_key,
)
from sealserve.attest.tee import PlatformClient
from sealserve.config import Settings
from sealserve.ecall import runtime_launch_config
from sealserve.errors import GatewayError, SealserveError, TeeError
from sealserve.gateway import (
    Gateway,
    GatewayOptions,
    GatewayServer,
    ScrapeTarget,
    UploadOptions,
    UploadService,
)
from sealserve.instance import ModelStore, open_store
from sealserve.keyservice import LaunchedKeyService, launch_keyservice
from sealserve.packer import CostPriors
from sealserve.platform import (
    LocalBackend,
    LocalOptions,
    ModelCatalog,
    Platform,
    PlatformConfig,
)

__all__ = ["DeploymentInfo", "DeploymentOptions", "LocalDeployment"]

_log = get_logger(__name__)
_DAEMON_TIMEOUT_S: Final = 60.0
_STOP_TIMEOUT_S: Final = 30.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeploymentOptions:
    """Where ``sealserve up`` keeps its state and how it is configured.

    Ports default to the settings' (``keyservice.port``, ``gateway.port``); 0 picks free ones.
    ``log_level`` applies to the daemon and the KeyService (their logs go to
    ``<data-dir>/logs/``), ``instance_log_level`` to the instances (``<data-dir>/run/``).
    """

    data_dir: Path
    settings: Settings = dataclasses.field(default_factory=Settings)
    platform: PlatformConfig | None = None
    host: str = "127.0.0.1"
    keyservice_port: int | None = None
    gateway_port: int | None = None
    log_level: str = "INFO"
    instance_log_level: str = "WARNING"
    priors: CostPriors | None = None
    #: The platform part every policy pins on a hardware backend (``attest.backend``); with a
    #: TPM and none given, PCRs 0-7 as the TPM reports them at start are recorded.
    reference_values: tuple[ReferenceValues, ...] = ()
    #: ``sealserve up --tls``: every service speaks HTTPS with a certificate of a throwaway
    #: local CA made at start (``<data-dir>/tls/ca.pem`` is what clients trust).  Without it,
    #: ``tls.cert``/``tls.key`` of the settings, if set, are used the same way.
    local_tls: bool = False

    def __post_init__(self) -> None:
        for level in (self.log_level, self.instance_log_level):
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise ValueError(f"log level has value {level!r}; use DEBUG, INFO, WARNING, ERROR")
        for name in ("keyservice_port", "gateway_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{name} must be within [0, 65535], got {port!r}")

    @property
    def platform_config(self) -> PlatformConfig:
        return self.platform or PlatformConfig.from_settings(self.settings)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeploymentInfo:
    """Where everything listens and what clients pin (nothing secret)."""

    data_dir: str
    gateway_url: str
    keyservice_url: str
    tee_socket: str
    platform_key_file: str
    #: ``simulated``, or the hardware backend the platform daemon runs on.
    backend: str
    #: Hardware backends: the reference values file every policy pins, and the TPM roots file.
    reference_values_file: str
    tpm_roots_file: str
    keyservice_measurement: str
    runtime_measurement: str
    keyservice_id: str
    store_dir: str
    #: The CA bundle clients verify the services' TLS certificates against ("" without TLS).
    ca_bundle: str
    logs_dir: str
    policy: str
    #: The instance sizes the policy may start: ``memory_mb`` (billed) and ``budget_mb``
    #: (for models), smallest first.
    shapes: list[dict[str, float]]
    pids: dict[str, int]
    #: The browser client's page (``gateway.web``), else empty.
    web_url: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LocalDeployment:
    """The TEE daemon, the KeyService, the local platform and the gateway (see above)."""

    def __init__(self, options: DeploymentOptions) -> None:
        if not isinstance(options, DeploymentOptions):
            raise TypeError(f"options must be DeploymentOptions, got {type(options).__name__}")
        self.options = options
        self.data_dir = Path(options.data_dir).resolve()
        self.logs_dir = self.data_dir / "logs"
        self.run_dir = self.data_dir / "run"
        self.store = open_store(options.settings.store.url or self.data_dir / "store")
        self.catalog = ModelCatalog(self.store, memory_factor=options.platform_config.memory_factor)
        self._socket_dir: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._client: PlatformClient | None = None
        self._keyservice: LaunchedKeyService | None = None
        self.platform: Platform | None = None
        self.gateway: Gateway | None = None
        self.server: GatewayServer | None = None
        self.uploads: UploadService | None = None
        self._info: DeploymentInfo | None = None
        self._references_file: Path | None = None
        self._started_thread = False
        self.tls: TlsFiles | None = None
        self.ca_bundle: Path | None = None

    @property
    def info(self) -> DeploymentInfo:
        if self._info is None:
            raise GatewayError("the deployment is not open")
        return self._info

    @property
    def info_file(self) -> Path:
        """``<data-dir>/run/up.json``: :attr:`info` while the deployment runs."""
        return self.run_dir / "up.json"

    # -- starting ------------------------------------------------------------------------------

    def open(self, *, progress: Callable[[str], None] | None = None) -> LocalDeployment:
        """Start the daemon and the KeyService, and build the platform and the gateway (the
        gateway listens once :meth:`serve` or :meth:`start` runs)."""
        say = progress or (lambda _step: None)
        try:
            for folder in (self.data_dir, self.logs_dir, self.run_dir):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if isinstance(self.store, ModelStore):
                self.store.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._set_up_tls()
            say("TEE platform daemon")
            self._start_daemon()
            say("KeyService")
            self._start_keyservice()
            say("gateway and local platform")
            self._build_gateway()
        except BaseException:
            self.close()
            raise
        self._write_info()
        return self

    def _set_up_tls(self) -> None:
        """The TLS files every service presents and the bundle clients check them with."""
        o = self.options
        if o.local_tls:
            hosts = [o.host, "127.0.0.1", "localhost"]
            if o.host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming, not binding
                hosts.append(socket.gethostname())
            made = make_local_ca(self.data_dir / "tls", hosts=hosts)
            self.tls, self.ca_bundle = made.server, made.ca_bundle
        elif o.settings.tls.cert is not None and o.settings.tls.key is not None:
            self.tls = TlsFiles(cert=o.settings.tls.cert, key=o.settings.tls.key)
            self.ca_bundle = o.settings.tls.ca_bundle

    def _start_daemon(self) -> None:
        o = self.options
        self._socket_dir = Path(tempfile.mkdtemp(prefix="sealserve-tee-"))
        socket_path = self._socket_dir / "tee.sock"
        command = [
            sys.executable, "-m", "sealserve", "attest", "platform", "serve",
            "--socket", str(socket_path),
            "--data-dir", str(self.data_dir),
            "--log-level", o.log_level,
            "--config", str(self._attest_config()),
        ]  # fmt: skip
        env = dict(os.environ)
        lifeline = tie_to_this_process(env)
        with (self.logs_dir / "tee.log").open("ab") as log:
            self._daemon = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                pass_fds=(lifeline,),
                start_new_session=True,
            )
        deadline = time.monotonic() + _DAEMON_TIMEOUT_S
        while True:  # bounded by the deadline
            if self._daemon.poll() is not None:
                raise TeeError(
                    f"the TEE platform daemon exited with status {self._daemon.returncode}; "
                    f"see {self.logs_dir / 'tee.log'}"
                )
            if socket_path.exists():
                try:
                    self._client = PlatformClient(socket_path).open()
                    break
                except TeeError:
                    pass
            if time.monotonic() > deadline:
                raise TeeError("the TEE platform daemon did not start in time")
            time.sleep(0.05)

    def _start_keyservice(self) -> None:
        assert self._client is not None
        settings = self.options.settings.keyservice
        changes: dict[str, Any] = {"host": self.options.host}
        if self.options.keyservice_port is not None:
            changes["port"] = self.options.keyservice_port
        settings = dataclasses.replace(settings, **changes)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        fd = os.open(self.logs_dir / "keyservice.log", flags, 0o600)
        try:
            self._keyservice = launch_keyservice(
                self._client,
                settings,
                data_dir=self.data_dir,
                platform_key=self.platform_key_file if self.backend == "simulated" else None,
                log_level=self.options.log_level,
                stderr=fd,
                tls=self.tls,
            )
        finally:
            os.close(fd)

    @property
    def platform_key_file(self) -> Path:
        return self.data_dir / "tee" / "platform.pub"

    @property
    def backend(self) -> str:
        """``simulated`` or the hardware backend the daemon reports."""
        assert self._client is not None
        return str(self._client.info().get("backend", "simulated"))

    def trust_anchors(self) -> TrustAnchors:
        """What the runtimes trust to vouch for the KeyService: the simulated platform's key,
        or the hardware's roots (the TPM roots the KeyService is configured with)."""
        if self.backend == "simulated":
            public_key = read_platform_public_key(self.data_dir)
            return TrustAnchors(simulated_platform_keys=frozenset({public_key}))
        roots = self.options.settings.keyservice.tpm_roots
        tpm = None
        if roots is not None:
            tpm = TpmAnchors(roots=(Path(roots).read_bytes(),))
        return TrustAnchors(tpm=tpm)

    def _attest_config(self) -> Path:
        """The daemon's settings file: the ``[attest]`` table of this deployment's settings."""
        attest = self.options.settings.attest
        lines = ["[attest]"]
        for field in dataclasses.fields(attest):
            value = getattr(attest, field.name)
            lines.append(f"{field.name} = {_toml(value)}")
        path = self.run_dir / "attest.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _reference_values(self) -> tuple[ReferenceValues, ...]:
        """The platform part every policy pins (none on the simulated platform)."""
        if self.backend == "simulated":
            return ()
        references = self.options.reference_values
        if not references and self.backend in ("tpm", "azure-cvm"):
            # What an owner does with an image it audited: record the boot PCRs.
            from sealserve.attest._tpm_device import TpmDevice

            attest = self.options.settings.attest
            device = TpmDevice(tcti=attest.tpm_tcti)
            boot = device.read_pcrs(attest.tpm_boot_pcrs)
            pinned = {index: frozenset({value.hex()}) for index, value in boot.items()}
            references = (ReferenceValues(tpm=TpmReference(pcrs=pinned)),)
        if not references:
            raise TeeError(
                f"the {self.backend} backend needs the reference values of this VM image "
                "(sealserve up --reference-values FILE; docs/deploy-*.md)"
            )
        self._references_file = self.run_dir / "reference-values.json"
        self._references_file.write_text(
            json.dumps([r.to_dict() for r in references], indent=1) + "\n"
        )
        return references

    def _build_gateway(self) -> None:
        assert self._client is not None
        assert self._keyservice is not None
        o = self.options
        client = self._client
        keyservice_measurement = str(self._keyservice.measurement)
        references = self._reference_values()
        pin = runtime_launch_config(
            keyservice_policy=Policy(
                measurements=frozenset({keyservice_measurement}), reference_values=references
            ),
            trust=self.trust_anchors(),
        )
        self._runtime_measurement = client.measurement("runtime", config=pin)
        client.prepare("runtime", config=pin)  # runtimes then fork from a measured template
        launch_config_file = None
        if self.backend != "simulated":
            launch_config_file = self.run_dir / "runtime-launch-config.json"
            launch_config_file.write_text(json.dumps(pin, indent=1) + "\n")
        config = o.platform_config
        backend = LocalBackend(
            LocalOptions(
                store_dir=self.store.location,
                keyservice_url=str(self._keyservice.url),
                tee_socket=client.socket_path,
                platform_key_file=self.platform_key_file,
                keyservice_measurement=keyservice_measurement,
                launch_config_file=launch_config_file,
                run_dir=self.run_dir / "instances",
                memory_factor=config.memory_factor,
                threads=config.threads,
                max_body_mb=max(1, -(-o.settings.gateway.max_body_bytes // (1 << 20))),
                log_level=o.instance_log_level,
                host=o.host,
                tls=self.tls,
                ca_bundle=self.ca_bundle,
            )
        )
        backend.prepare()  # the host template: cold starts fork a host
        registry = CollectorRegistry()
        platform = Platform(
            backend,
            config=config,
            model_memory_mb=self.catalog.memory_mb,
            priors=o.priors,
            registry=registry,
        )
        self.platform = platform
        uploads = None
        if o.settings.gateway.uploads:
            local = self.store.staging_dir()
            uploads = UploadService(
                self.store,
                staging_dir=(local or self.data_dir) / "uploads",
                options=UploadOptions.from_settings(o.settings.gateway),
                registry=registry,
            )
        self.uploads = uploads
        keyservice_url = str(self._keyservice.url)

        def scrape_targets() -> list[ScrapeTarget]:
            gateway_url = self.server.url if self.server is not None else None
            return platform_scrape_targets(platform, gateway_url, keyservice_url)

        self.gateway = Gateway(
            platform,
            self.catalog,
            options=GatewayOptions.from_settings(o.settings.gateway),
            registry=registry,
            on_startup=_opener(platform),
            on_shutdown=platform.close,
            uploads=uploads,
            health=platform_health(platform),
            scrape_targets=scrape_targets,
        )
        port = o.settings.gateway.port if o.gateway_port is None else o.gateway_port
        self.server = GatewayServer(
            self.gateway, host=o.host, port=port, log_level=o.log_level, tls=self.tls
        )

    def _write_info(self) -> None:
        assert self.server is not None
        assert self._keyservice is not None
        assert self._client is not None
        assert self._daemon is not None
        assert self.platform
        self._info = DeploymentInfo(
            data_dir=str(self.data_dir),
            gateway_url=self.server.url,
            keyservice_url=str(self._keyservice.url),
            tee_socket=str(self._client.socket_path),
            platform_key_file=str(self.platform_key_file) if self.backend == "simulated" else "",
            backend=self.backend,
            reference_values_file=str(self._references_file) if self._references_file else "",
            tpm_roots_file=str(self.options.settings.keyservice.tpm_roots or ""),
            keyservice_measurement=str(self._keyservice.measurement),
            runtime_measurement=self._runtime_measurement,
            keyservice_id=str(self._keyservice.keyservice_id),
            store_dir=self.store.location,
            ca_bundle=str(self.ca_bundle or ""),
            logs_dir=str(self.logs_dir),
            policy=self.platform.policy,
            shapes=[{"memory_mb": sh.memory_mb, "budget_mb": sh.budget_mb}
                    for sh in self.options.platform_config.shapes],
            pids={"tee": self._daemon.pid, "keyservice": int(self._keyservice.process.pid),
                  "gateway": os.getpid()},
            web_url=f"{self.server.url}/web/" if self.options.settings.gateway.web else "",
        )  # fmt: skip
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._info.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.info_file)

    # -- serving -------------------------------------------------------------------------------

    def serve(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Serve the gateway in this thread until SIGINT/SIGTERM, then :meth:`close`."""
        if self.server is None:
            raise GatewayError("open() the deployment first")
        try:
            self.server.serve(on_ready=on_ready)
        finally:
            self.close()

    def start(self) -> LocalDeployment:
        """Serve the gateway from a background thread (tests, embedding)."""
        if self.server is None:
            self.open()
        assert self.server is not None
        try:
            self.server.start()
        except BaseException:
            self.close()
            raise
        self._started_thread = True
        return self

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stopping ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the gateway (and with it every instance), the KeyService and the daemon."""
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()  # also unbinds a server that never ran
        if self._keyservice is not None:
            keyservice, self._keyservice = self._keyservice, None
            pid = keyservice.process.pid
            with contextlib.suppress(SealserveError, OSError):
                if keyservice.stop(timeout=_STOP_TIMEOUT_S) is None:  # the daemon kills it
                    _log.event(
                        "stop.killed",
                        level=logging.WARNING,
                        pid=pid,
                        process="keyservice",
                        reason=f"not stopped {_STOP_TIMEOUT_S:.0f} s after SIGTERM",
                    )
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._daemon is not None:
            daemon, self._daemon = self._daemon, None
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    _log.event(
                        "stop.killed",
                        level=logging.WARNING,
                        pid=daemon.pid,
                        process="TEE platform daemon",
                        reason=f"not stopped {_STOP_TIMEOUT_S:.0f} s after SIGTERM",
                    )
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        daemon.wait(10)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        with contextlib.suppress(OSError):
            self.info_file.unlink(missing_ok=True)
        if self._info is not None:
            _log.event("deployment.stopped", data_dir=str(self.data_dir))

    def __repr__(self) -> str:
        url = self._info.gateway_url if self._info else None
        return f"LocalDeployment({str(self.data_dir)!r}, gateway={url!r})"


def _opener(platform: Platform) -> Callable[[], Any]:
    async def open_platform() -> None:
        await platform.open()

    return open_platform


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def platform_health(platform: Platform) -> Health:
    """The gateway's readiness beyond its own: its platform is open."""

    def platform_open() -> str | None:
        return None if platform.state is ResourceState.OPENED else "the platform is not open"

    return Health(ready_checks=(platform_open,))


def platform_scrape_targets(
    platform: Platform, gateway_url: str | None, keyservice_url: str | None
) -> list[ScrapeTarget]:
    """What Prometheus scrapes: the gateway, the KeyService, and each instance alive now."""
    found = []
    if gateway_url:
        found.append(ScrapeTarget("gateway", gateway_url))
    if keyservice_url:
        found.append(ScrapeTarget("keyservice", keyservice_url))
    for inst in platform.stats().instances:
        if inst.url:
            labels = {"sealserve_instance": str(inst.instance_id)}
            found.append(ScrapeTarget("instance", inst.url, labels))
    return found
