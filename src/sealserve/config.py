"""Settings from defaults, a TOML file and the environment, in that order of precedence.

Each section is a frozen dataclass; a key ``port`` of section ``keyservice`` is read from the
TOML table ``[keyservice]`` and from the variable ``SEALSERVE_KEYSERVICE_PORT``.  The file is
the one given to :func:`load_settings`, else ``$SEALSERVE_CONFIG``, else none.  Every bad value
raises :class:`~sealserve.errors.ConfigError` naming the key, where it came from, and the value::

    Config 'keyservice.port' (from SEALSERVE_KEYSERVICE_PORT) has value 'abc'. Not a valid int.

Command-line flags override all of these; they are applied with :meth:`Settings.replace`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from sealserve.errors import ConfigError

__all__ = [
    "ATTEST_BACKENDS",
    "AttestSettings",
    "GatewaySettings",
    "KeyServiceSettings",
    "PlatformSettings",
    "RUNTIME_RESERVE_MB",
    "RuntimeSettings",
    "Settings",
    "StoreSettings",
    "TlsSettings",
    "load_settings",
]

_ENV_PREFIX = "SEALSERVE_"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Variables that used to hand the KeyService a master key chosen by whoever launched it.
_REMOVED_ENV: Final = ("SEALSERVE_KEYSERVICE_MASTER_KEY", "SEALSERVE_KEYSERVICE_MASTER_KEY_FILE")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sealserve"


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8470
    #: SQLAlchemy URL; empty means a SQLite file in the data directory.
    db_url: str = ""
    challenge_ttl_s: float = 60.0
    release_ttl_s: float = 300.0
    replay_window_s: float = 300.0
    #: How long a runtime may use released keys without a revocation poll confirming that no
    #: revocation touched them: the revocation latency (seconds).
    revocation_check_s: float = 5.0
    max_body_bytes: int = 1 << 20
    #: Signed requests per principal (and GET /v1/attestation per client address).
    rate_limit_per_s: float = 200.0
    rate_limit_burst: int = 400
    #: A principal's share of the replay memory: signed requests per replay window.
    signed_requests_per_window: int = 6000
    #: Revocations and withdrawn request keys per principal (a budget of their own).
    revocations_per_s: float = 20.0
    revocation_burst: int = 200
    #: Registrations per client address.
    registrations_per_s: float = 5.0
    registration_burst: int = 50
    #: Releases per attested runtime key (charged once its evidence verified).
    runtime_releases_per_s: float = 50.0
    runtime_release_burst: int = 200
    #: Revocation polls per attested runtime key.
    runtime_polls_per_s: float = 10.0
    runtime_poll_burst: int = 20
    #: Accept SEV-SNP reports and Azure CVMs (chained to AMD's ARKs, pinned in the code).
    accept_snp: bool = True
    #: ``PRODUCT=SHA256`` pins of other ARKs, comma-separated, instead of AMD's (tests only).
    snp_ark_pins: str = ""
    #: The operator's AMD certificate cache (``sealserve attest snp-cache fill``): read at start.
    snp_cache: Path | None = None
    #: A PEM bundle of the roots a TPM attestation key's certificate must chain to; none:
    #: TPM quotes are refused.  Its content is measured (clients pin it with the measurement).
    tpm_roots: Path | None = None
    #: A certificate (PEM or DER) DCAP quotes must chain to instead of Intel's SGX Root CA
    #: (tests only: a test hierarchy's root).  Measured, as ``tpm_roots``.
    dcap_root: Path | None = None
    #: Reference values (a JSON file: one document or a list) of the confidential VM images
    #: this KeyService's replicas may run on: in a CVM, a replica on another node gets (or
    #: gives) the master key only on one of them.  Measured.
    replica_reference_values: Path | None = None

    def __post_init__(self) -> None:
        _check_port("keyservice.port", self.port)
        for pin in filter(None, self.snp_ark_pins.split(",")):
            product, sep, digest = pin.partition("=")
            if (
                not sep
                or product not in ("Milan", "Genoa", "Turin")
                or len(digest) != 64
                or any(c not in "0123456789abcdef" for c in digest)
            ):
                raise ConfigError(
                    f"Config 'keyservice.snp_ark_pins' has value {self.snp_ark_pins!r}. "
                    "Not PRODUCT=<64 lowercase hex>, comma-separated (Milan, Genoa, Turin)."
                )
        for name in (
            "challenge_ttl_s",
            "release_ttl_s",
            "replay_window_s",
            "revocation_check_s",
            "rate_limit_per_s",
            "revocations_per_s",
            "registrations_per_s",
            "runtime_releases_per_s",
            "runtime_polls_per_s",
        ):
            _check_positive(f"keyservice.{name}", getattr(self, name))
        for name in (
            "max_body_bytes",
            "rate_limit_burst",
            "signed_requests_per_window",
            "revocation_burst",
            "registration_burst",
            "runtime_release_burst",
            "runtime_poll_burst",
        ):
            _check_positive(f"keyservice.{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8480
    max_body_bytes: int = 64 << 20
    request_timeout_s: float = 60.0
    max_queued: int = 256
    #: Serve the browser client's page and module under /web/ (docs/web.md); off by default.
    web: bool = False
    #: Serve the model upload API (owners' signed uploads into the store).
    uploads: bool = True
    #: Largest sealed model an upload may declare.
    max_model_bytes: int = 4 << 30
    #: Largest chunk of an upload accepted (what clients are told to send).
    upload_chunk_bytes: int = 8 << 20
    #: Uploads in progress at once, in all and per owner.
    max_uploads: int = 16
    max_uploads_per_owner: int = 4
    #: An upload with no activity for this long is discarded.
    upload_ttl_s: float = 3600.0
    #: Slow clients (slowloris): the longest wait for a body's next byte, the average rate
    #: (bytes/s) a body must keep after that, the bytes of bodies held at once, and the
    #: connections one client address may hold (docs/http-api.md).
    body_timeout_s: float = 10.0
    min_body_rate: int = 16 * 1024
    max_body_bytes_in_flight: int = 1 << 30
    max_connections_per_source: int = 512

    def __post_init__(self) -> None:
        _check_port("gateway.port", self.port)
        for name in (
            "max_body_bytes",
            "request_timeout_s",
            "max_queued",
            "max_model_bytes",
            "upload_chunk_bytes",
            "max_uploads",
            "max_uploads_per_owner",
            "upload_ttl_s",
            "body_timeout_s",
            "min_body_rate",
            "max_body_bytes_in_flight",
            "max_connections_per_source",
        ):
            _check_positive(f"gateway.{name}", getattr(self, name))
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ConfigError(
                f"Config 'gateway.max_body_bytes_in_flight' has value "
                f"{self.max_body_bytes_in_flight!r}. Must be at least gateway.max_body_bytes "
                f"({self.max_body_bytes!r})."
            )
        if self.upload_chunk_bytes < 1024:
            raise ConfigError(
                f"Config 'gateway.upload_chunk_bytes' has value {self.upload_chunk_bytes!r}. "
                "Must be at least 1024."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS for this machine's services and clients (docs/deployment.md).

    ``cert`` and ``key`` (PEM) make the KeyService, the gateway and the instance hosts listen
    on HTTPS; ``ca_bundle`` is what clients (and services calling each other) verify servers
    against, instead of the system's roots.
    """

    cert: Path | None = None
    key: Path | None = None
    ca_bundle: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError(
                "Config 'tls.cert' and 'tls.key' go together: set both (a server certificate "
                "chain and its private key) or neither."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreSettings:
    """Where sealed models are kept: ``url`` empty is ``<data-dir>/store`` (a directory);
    else a directory path or an fsspec URL (``s3://bucket/prefix``, ``file:///srv/models``)
    that the gateway writes and every instance reads."""

    url: str = ""


#: What an instance keeps beside its models for the instance host and the runtime themselves:
#: the default model budget is ``platform.instance_memory_mb`` less this.  Measured on the
#: zoo's models (docs/operating.md, "Instance sizes"): an empty host + runtime pair holds
#: 169 MB, and the pair's memory beyond what the runtime charges its models peaked at 344 MB
#: (MiniLM int8 alone, during its load and four concurrent requests); rounded up to the
#: platform's 128 MB step.
RUNTIME_RESERVE_MB: Final = 384


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlatformSettings:
    keep_alive_s: float = 180.0
    max_instances: int = 4
    instance_concurrency: int = 4
    #: Billed memory of the platform's own instance size.
    instance_memory_mb: int = 2048
    #: Other instance sizes (billed MB) the ``sealserve`` policy may start; each keeps the same
    #: reserve for the host and the runtime as the platform's own instances.  The defaults
    #: leave 512 and 1,024 MB for models beside the 384 MB reserve (docs/operating.md).
    sizes_mb: tuple[int, ...] = (896, 1408)
    #: FnPacker policy used by the live router.
    policy: str = "sealserve"
    #: Spare instances (started, attested, no model) kept at most while new instances are
    #: being asked for: a request that needs a new instance takes one instead of a cold
    #: start.  Billed like any instance; 0 turns them off.
    spares: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.spares, bool) or not isinstance(self.spares, int) or self.spares < 0:
            raise ConfigError(
                f"Config 'platform.spares' has value {self.spares!r}. Not an int >= 0."
            )
        _check_positive("platform.keep_alive_s", self.keep_alive_s)
        _check_positive("platform.max_instances", self.max_instances)
        _check_positive("platform.instance_concurrency", self.instance_concurrency)
        _check_positive("platform.instance_memory_mb", self.instance_memory_mb)
        sizes: object = self.sizes_mb
        if isinstance(sizes, list):
            object.__setattr__(self, "sizes_mb", tuple(sizes))
        elif not isinstance(sizes, tuple):
            raise ConfigError(
                f"Config 'platform.sizes_mb' has value {sizes!r}. Not a list of ints."
            )
        for size in self.sizes_mb:
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ConfigError(
                    f"Config 'platform.sizes_mb' has value {list(self.sizes_mb)!r}. "
                    f"Every size must be an int greater than zero, got {size!r}."
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    #: Memory for unsealed models in each runtime; ``None`` derives it from the instance's
    #: memory (see :meth:`memory_budget_for`).
    memory_budget_mb: int | None = None
    threads: int = 2
    executor_workers: int = 4

    def __post_init__(self) -> None:
        if self.memory_budget_mb is not None:
            _check_positive("runtime.memory_budget_mb", self.memory_budget_mb)
        _check_positive("runtime.threads", self.threads)
        _check_positive("runtime.executor_workers", self.executor_workers)

    def memory_budget_for(self, platform: PlatformSettings) -> int:
        """The model budget of a runtime in an instance of ``platform.instance_memory_mb``:
        ``memory_budget_mb`` when set, else the instance's memory less
        :data:`RUNTIME_RESERVE_MB`."""
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb
        return platform.instance_memory_mb - RUNTIME_RESERVE_MB


#: The evidence backends ``attest.backend`` names (docs/threat-model.md, "Backends").
ATTEST_BACKENDS: Final = ("simulated", "tsm", "gramine", "tpm", "azure-cvm", "auto")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttestSettings:
    """Where the measured launcher gets evidence and sealing keys.

    ``backend``: ``simulated`` (development and CI: a key in the data directory signs), or
    hardware: ``tsm`` (Linux configfs-tsm: TDX quotes or SEV-SNP reports), ``gramine`` (SGX in
    a Gramine enclave), ``tpm`` (a TPM 2.0 quote), ``azure-cvm`` (an Azure confidential VM's HCL
    report and vTPM quote); ``auto`` picks the hardware present and refuses to start when there
    is none, unless ``allow_simulated`` is set.  A hardware backend never falls back to the
    simulated one.
    """

    backend: str = "simulated"
    #: With ``auto``: start on the simulated platform when no hardware is found (else refuse).
    allow_simulated: bool = False
    #: configfs-tsm's report directory (``tsm``).
    tsm_report_dir: str = "/sys/kernel/config/tsm/report"
    #: TDX's RTMR3 attribute (``tsm`` on TDX; Linux 6.16+).
    tdx_rtmr3: str = "/sys/class/misc/tdx_guest/measurements/rtmr3:sha384"
    #: The SEV-SNP guest device (``tsm`` on SNP: derived sealing keys).
    sev_guest_device: str = "/dev/sev-guest"
    #: The launch log an SEV-SNP VM was started for (its SHA-256 replay is HOST_DATA).
    snp_launch_log: str = ""
    #: Gramine's attestation pseudo-filesystem (``gramine``).
    gramine_dir: str = "/dev/attestation"
    #: DCAP collateral (JSON) sent with TDX and SGX quotes; refreshed by the operator.
    dcap_collateral: str = ""
    #: How tpm2-tools reach the TPM (``tpm``, ``azure-cvm``).
    tpm_tcti: str = "device:/dev/tpmrm0"
    #: The attestation key: a persistent handle or a saved context (Azure: 0x81000003).
    tpm_ak: str = ""
    #: PEM file of the AK's certificate chain (leaf first).
    tpm_ak_chain: str = ""
    tpm_ak_scheme: str = "rsassa"
    #: The PCR (SHA-256 bank) the launcher extends with what it launches.
    tpm_launch_pcr: int = 23
    #: The boot PCRs quoted beside it, and the ones the TPM sealing root is bound to.
    tpm_boot_pcrs: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)

    def __post_init__(self) -> None:
        if self.backend not in ATTEST_BACKENDS:
            raise ConfigError(
                f"Config 'attest.backend' has value {self.backend!r}. "
                f"Not one of {', '.join(repr(b) for b in ATTEST_BACKENDS)}."
            )
        pcrs: object = self.tpm_boot_pcrs
        if isinstance(pcrs, list):
            object.__setattr__(self, "tpm_boot_pcrs", tuple(pcrs))
        for index in (self.tpm_launch_pcr, *self.tpm_boot_pcrs):
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 23:
                raise ConfigError(
                    f"Config 'attest.tpm_launch_pcr'/'attest.tpm_boot_pcrs' has PCR {index!r}. "
                    "A PCR index is 0 to 23."
                )
        if self.tpm_launch_pcr in self.tpm_boot_pcrs:
            raise ConfigError(
                f"Config 'attest.tpm_launch_pcr' ({self.tpm_launch_pcr}) is one of "
                "'attest.tpm_boot_pcrs': the launcher must extend a PCR the boot does not."
            )
        if self.tpm_ak_scheme not in ("rsassa", "rsapss", "ecdsa"):
            raise ConfigError(
                f"Config 'attest.tpm_ak_scheme' has value {self.tpm_ak_scheme!r}. "
                "Not one of 'rsassa', 'rsapss', 'ecdsa'."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path = dataclasses.field(default_factory=_default_data_dir)
    log_level: str = "INFO"
    keyservice: KeyServiceSettings = dataclasses.field(default_factory=KeyServiceSettings)
    gateway: GatewaySettings = dataclasses.field(default_factory=GatewaySettings)
    store: StoreSettings = dataclasses.field(default_factory=StoreSettings)
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    platform: PlatformSettings = dataclasses.field(default_factory=PlatformSettings)
    runtime: RuntimeSettings = dataclasses.field(default_factory=RuntimeSettings)
    attest: AttestSettings = dataclasses.field(default_factory=AttestSettings)

    def __post_init__(self) -> None:
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(
                f"Config 'log_level' has value {self.log_level!r}. "
                f"Not one of {', '.join(_LOG_LEVELS)}."
            )
        _check_instance_memory(self.platform, self.runtime)

    def replace(self, **changes: Any) -> Settings:
        """A copy with top-level fields replaced (use ``dataclasses.replace`` on a section)."""
        return dataclasses.replace(self, **changes)


_Section = TypeVar("_Section")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read settings: defaults, then the TOML file, then ``SEALSERVE_*`` variables."""
    environ = os.environ if env is None else env
    for name in _REMOVED_ENV:
        if name in environ:
            raise ConfigError(
                f"{name} is set, but the KeyService no longer takes its master key from its "
                "launcher: it generates it inside the attested process and keeps it sealed to "
                f"its TEE identity (docs/keyservice.md, section 5). Unset {name}."
            )
    file_path = path if path is not None else environ.get(_ENV_PREFIX + "CONFIG") or None
    table: dict[str, Any] = {}
    if file_path is not None:
        table = _read_toml(Path(file_path))
    return _build(Settings, table, environ, section="", source=str(file_path or ""))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file '{path}' is not valid TOML: {exc}.") from exc


def _build(
    cls: type[_Section],
    table: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    section: str,
    source: str,
) -> _Section:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known:
            raise ConfigError(
                f"Config '{_dotted(section, key)}' in '{source}' is not a known setting. "
                f"Known: {', '.join(sorted(known))}."
            )
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[field.name]
        dotted = _dotted(section, field.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            sub = table.get(field.name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"Config '{dotted}' in '{source}' must be a table.")
            values[field.name] = _build(hint, sub, environ, section=dotted, source=source)
            continue
        env_name = _ENV_PREFIX + dotted.replace(".", "_").upper()
        if env_name in environ:
            values[field.name] = _coerce(hint, environ[env_name], dotted, f"from {env_name}")
        elif field.name in table:
            values[field.name] = _coerce(hint, table[field.name], dotted, f"in '{source}'")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Config section '{section or 'top level'}' is invalid: {exc}") from exc


def _coerce(hint: Any, raw: Any, dotted: str, where: str) -> Any:
    if typing.get_origin(hint) is tuple:
        return _coerce_ints(raw, dotted, where)
    target = _base_type(hint)
    bad = ConfigError(
        f"Config '{dotted}' ({where}) has value {raw!r}. Not a valid {target.__name__}."
    )
    if target is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad
    if target is Path:
        if not isinstance(raw, str) or not raw:
            raise bad
        return Path(raw).expanduser()
    if target is int:
        if isinstance(raw, bool):
            raise bad
        try:
            return int(str(raw).strip(), 10) if not isinstance(raw, int) else raw
        except ValueError:
            raise bad from None
    if target is float:
        if isinstance(raw, bool):
            raise bad
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(value):
            raise ConfigError(
                f"Config '{dotted}' ({where}) has value {raw!r}. Not a finite number."
            )
        return value
    if target is str:
        if not isinstance(raw, str):
            raise bad
        return raw
    raise bad  # pragma: no cover - a field type this loader does not know


def _coerce_ints(raw: Any, dotted: str, where: str) -> tuple[int, ...]:
    """A list of ints: a TOML array, or a variable's comma-separated text (empty: none)."""
    bad = ConfigError(
        f"Config '{dotted}' ({where}) has value {raw!r}. Not a list of ints "
        "(a TOML array such as [896, 1408], or 896,1408 in a variable)."
    )
    if isinstance(raw, str):
        parts = [part.strip() for part in raw.split(",")] if raw.strip() else []
        try:
            return tuple(int(part, 10) for part in parts)
        except ValueError:
            raise bad from None
    if isinstance(raw, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in raw
    ):
        return tuple(raw)
    raise bad


def _base_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if isinstance(hint, type):
        return hint
    raise TypeError(f"unsupported settings type {hint!r}")  # pragma: no cover


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _check_port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"Config '{name}' has value {value!r}. Not a port (0-65535).")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes ``<= 0``
        raise ConfigError(f"Config '{name}' has value {value!r}. Not a finite number.")
    if value <= 0:
        raise ConfigError(f"Config '{name}' has value {value!r}. Must be greater than zero.")


def _check_instance_memory(platform: PlatformSettings, runtime: RuntimeSettings) -> None:
    """The model budget leaves room in the instance for the host and the runtime."""
    memory = platform.instance_memory_mb
    budget = runtime.memory_budget_mb
    if budget is None and memory <= RUNTIME_RESERVE_MB:
        raise ConfigError(
            f"Config 'platform.instance_memory_mb' has value {memory!r}. Must be more than "
            f"the {RUNTIME_RESERVE_MB} MB an instance reserves for its host and runtime "
            "(or set 'runtime.memory_budget_mb' below it)."
        )
    if budget is not None and budget >= memory:
        raise ConfigError(
            f"Config 'runtime.memory_budget_mb' has value {budget!r}. Must be less than "
            f"'platform.instance_memory_mb' ({memory!r}): the instance holds the host and "
            "the runtime beside the models."
        )
