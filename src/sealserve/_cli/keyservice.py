"""``sealserve keyservice …``: run the KeyService (launched, measured, attested) and inspect it.

Also the options and helpers that ``sealserve owner`` and ``sealserve user`` share: where the
KeyService is, how to pin it, how to read a policy from the command line, how errors print.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from sealserve.config import Settings, load_settings
from sealserve.errors import SealserveError

__all__ = [
    "DataDirOpt",
    "IdentityOpt",
    "JsonOpt",
    "CaBundleOpt",
    "TlsCertOpt",
    "TlsKeyOpt",
    "KeyServiceMeasurementOpt",
    "KeyServiceUrlOpt",
    "MeasurementOpt",
    "ReferenceValuesOpt",
    "PlatformKeyOpt",
    "PolicyFileOpt",
    "app",
    "build_pin",
    "build_policy",
    "check_policy_flags",
    "emit",
    "fail",
    "guarded",
    "keyservice_url",
    "GramineCommandOpt",
    "GramineOpt",
    "open_launcher",
    "read_secret_file",
    "resolve_ca_bundle",
    "resolve_data_dir",
    "settings",
    "tls_files",
    "write_secret_file",
]

app = typer.Typer(
    help="The KeyService: attested key release, access control and audit.",
    no_args_is_help=True,
)

_T = TypeVar("_T")

# -- shared options -------------------------------------------------------------------------

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $SEALSERVE_DATA_DIR or XDG)."),
]
KeyServiceUrlOpt = Annotated[
    str | None,
    typer.Option("--keyservice", help="KeyService URL (default: from the settings)."),
]
IdentityOpt = Annotated[
    Path | None, typer.Option("--identity", help="Identity file (default: in the data dir).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
SnpCacheOpt = Annotated[
    Path | None,
    typer.Option(help="AMD certificate cache ('sealserve attest snp-cache fill') for SEV-SNP."),
]
TpmRootsOpt = Annotated[
    Path | None,
    typer.Option(
        help="PEM bundle of the roots TPM attestation keys must chain to (measured); "
        "without it TPM quotes are refused."
    ),
]
GramineOpt = Annotated[
    Path | None,
    typer.Option(
        "--gramine",
        help="Launch as SGX enclaves with gramine-sgx, from the signed manifests in this "
        "directory (<entry>.manifest.sgx, <entry>.sig; docs/deploy-sgx-gramine.md).",
    ),
]
GramineCommandOpt = Annotated[
    str | None,
    typer.Option("--gramine-command", help="The gramine-sgx command (default: gramine-sgx)."),
]
DcapRootOpt = Annotated[
    Path | None,
    typer.Option(
        help="A certificate (PEM or DER) DCAP quotes must chain to instead of Intel's SGX "
        "Root CA (measured; tests with a test hierarchy only)."
    ),
]
ReplicaRefsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Reference values (JSON: a document or a list) of the confidential VM images "
        "this KeyService's replicas may run on (measured; docs/keyservice.md, section 8)."
    ),
]
MeasurementOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--measurement",
        help="An allowed runtime measurement (hex); repeat for several.",
    ),
]
ReferenceValuesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--reference-values",
        help="Reference values of a confidential VM image (JSON, see docs/threat-model.md); "
        "repeat for several images, any one of which admits a runtime.",
    ),
]
PolicyFileOpt = Annotated[
    Path | None, typer.Option("--policy", help="A JSON policy file (Policy.to_dict form).")
]
PlatformKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--platform-key",
        help="Pin this simulated platform public key file (default: <data-dir>/tee/platform.pub).",
    ),
]
TlsCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert", help="Serve HTTPS with this certificate chain (PEM; default: tls.cert)."
    ),
]
TlsKeyOpt = Annotated[
    Path | None,
    typer.Option("--tls-key", help="The TLS certificate's private key (PEM; default: tls.key)."),
]
CaBundleOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-bundle",
        help="PEM file the servers' TLS certificates must chain to (default: tls.ca_bundle, "
        "else <data-dir>/tls/ca.pem when 'sealserve up --tls' made one, else the system's).",
    ),
]
KeyServiceMeasurementOpt = Annotated[
    str | None,
    typer.Option(
        "--keyservice-measurement",
        help="Pin this KeyService measurement (default: computed from the installed code).",
    ),
]


def settings() -> Settings:
    return load_settings()


def resolve_data_dir(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else settings().data_dir


def tls_files(cert: Path | None, key: Path | None, loaded: Settings | None = None) -> Any:
    """The server's TLS files (a ``TlsFiles``): the flags', else ``tls.cert``/``tls.key``,
    else ``None`` (plain HTTP); ``ValueError`` when only one of the two is given."""
    from sealserve._tls import TlsFiles

    current = loaded or settings()
    cert = cert if cert is not None else current.tls.cert
    key = key if key is not None else current.tls.key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together: give both or neither")
    return TlsFiles(cert=cert, key=key)


def resolve_ca_bundle(ca_bundle: Path | None, data_dir: Path) -> Path | None:
    """The CA bundle clients verify servers against: the one given, else ``tls.ca_bundle``,
    else the local CA that ``sealserve up --tls`` made in the data directory, else none (the
    system's roots)."""
    if ca_bundle is not None:
        return ca_bundle
    configured = settings().tls.ca_bundle
    if configured is not None:
        return configured
    local = data_dir / "tls" / "ca.pem"
    return local if local.is_file() else None


def keyservice_url(url: str | None) -> str:
    if url:
        return url
    current = settings()
    scheme = "https" if current.tls.cert is not None else "http"
    return f"{scheme}://{current.keyservice.host}:{current.keyservice.port}"


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def guarded(fn: Callable[[], _T]) -> _T:
    """Run ``fn``; a sealserve error, a bad value or an OS error is one line and exit 1."""
    try:
        return fn()
    except (SealserveError, ValueError, OSError) as exc:
        fail(str(exc) or type(exc).__name__)


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file of mode 0600 (refuse to overwrite)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_secret_file(path: Path, *, size: int = 32) -> bytes:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise ValueError(f"key file '{path}' has mode {mode & 0o777:o}; run: chmod 600 '{path}'")
    raw = path.read_bytes()
    if len(raw) != size:
        raise ValueError(f"key file '{path}' holds {len(raw)} bytes; a key has {size}")
    return raw


def check_policy_flags(
    measurements: Sequence[str] | None,
    policy_file: Path | None,
    *,
    allow_debug: bool,
    tcb_statuses: Sequence[str] | None,
    reference_values: Sequence[Path] | None = None,
) -> None:
    """A ``--policy`` file is the whole policy: the flags that would build one beside it
    (and so be ignored) are refused in one line, exit 2."""
    if policy_file is None:
        return
    given = [
        flag
        for flag, used in (
            ("--measurement", bool(measurements)),
            ("--allow-debug", allow_debug),
            ("--tcb-status", bool(tcb_statuses)),
            ("--reference-values", bool(reference_values)),
        )
        if used
    ]
    if given:
        fail(
            f"{', '.join(given)} cannot be combined with --policy FILE: put "
            f"{'them' if len(given) > 1 else 'it'} in the policy file "
            '("measurements", "allow_debug", "tcb_statuses", "reference_values") or drop '
            "--policy",
            2,
        )


def build_policy(
    measurements: Sequence[str] | None,
    policy_file: Path | None,
    *,
    allow_debug: bool,
    tcb_statuses: Sequence[str] | None,
    reference_values: Sequence[Path] | None = None,
) -> Any:
    """A runtime policy from ``--measurement``s (and ``--reference-values`` files of VM
    images), or a ``--policy`` file."""
    from sealserve.attest import Policy, ReferenceValues

    check_policy_flags(
        measurements,
        policy_file,
        allow_debug=allow_debug,
        tcb_statuses=tcb_statuses,
        reference_values=reference_values,
    )
    if policy_file is not None:
        try:
            doc = json.loads(policy_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"policy file '{policy_file}' is not JSON: {exc}") from exc
        return Policy.from_dict(doc)
    references = tuple(ReferenceValues.from_file(p) for p in reference_values or ())
    if not measurements and not references:
        raise ValueError(
            "a runtime policy is needed: --measurement HEX (see 'sealserve attest measure'), "
            "--reference-values FILE, or --policy FILE"
        )
    kwargs: dict[str, Any] = {
        "measurements": frozenset(measurements or ()),
        "allow_debug": allow_debug,
        "reference_values": references,
    }
    if tcb_statuses:
        kwargs["tcb_statuses"] = frozenset(tcb_statuses)
    return Policy(**kwargs)


def build_pin(data_dir: Path, measurement: str | None, platform_key: Path | None) -> Any:
    """The KeyServicePin: the computed (or given) measurement and platform key, and the
    instances remembered on first use in ``<data_dir>/client/known-keyservices.json``."""
    from sealserve.attest import Policy, TrustAnchors
    from sealserve.client import KeyServicePin
    from sealserve.client._keyservice import known_keyservices_file
    from sealserve.protocol import default_keyservice_pin

    known = known_keyservices_file(data_dir)
    if measurement is None and platform_key is None:
        policy, trust = default_keyservice_pin(data_dir)
        return KeyServicePin(policy=policy, trust=trust, known_keyservices=known)
    if measurement is not None:
        policy = Policy(measurements=frozenset({measurement}))
    else:
        policy, _ = default_keyservice_pin(data_dir)
    if platform_key is not None:
        raw = bytes.fromhex(platform_key.read_text().strip())
        trust = TrustAnchors(simulated_platform_keys=frozenset({raw}))
    else:
        trust = TrustAnchors.from_data_dir(data_dir)
    return KeyServicePin(policy=policy, trust=trust, known_keyservices=known)


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    typer.echo(json.dumps(data, sort_keys=True) if as_json else text)


# -- serve ------------------------------------------------------------------------------------


@app.command()
def serve(
    db: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (default: SQLite file in the data dir)."),
    ] = None,
    data_dir: DataDirOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (0: any free).")] = None,
    tee_socket: Annotated[
        Path | None,
        typer.Option(
            help="Launch through this platform daemon (default: a simulated platform embedded "
            "in this process, platform key included: for development only)."
        ),
    ] = None,
    platform_key: PlatformKeyOpt = None,
    rate_limit_per_s: Annotated[
        float | None, typer.Option(help="Requests per second per principal.")
    ] = None,
    rate_limit_burst: Annotated[int | None, typer.Option(help="Burst per principal.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="KeyService processes sharing the port, each launched and attested.",
        ),
    ] = 1,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    config: Annotated[Path | None, typer.Option(help="A sealserve TOML settings file.")] = None,
    snp_cache: SnpCacheOpt = None,
    tpm_roots: TpmRootsOpt = None,
    dcap_root: DcapRootOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    replica_reference_values: ReplicaRefsOpt = None,
    gramine: GramineOpt = None,
    gramine_command: GramineCommandOpt = None,
    join: Annotated[
        str | None,
        typer.Option(
            help="URL of a running KeyService of the same measurement on another node: obtain "
            "the master key from it by attested transfer when it does not unseal here."
        ),
    ] = None,
) -> None:
    """Start the KeyService, launched through the (simulated) TEE platform so it can attest.

    Prints where it listens and its measurement; stops cleanly on Ctrl-C or SIGTERM.  With
    --workers N, N processes serve one port (they share the database and the master key).

    Without --tee-socket, the simulated platform runs inside this (untrusted, serving host)
    process, its platform signing key included: this host could sign evidence of its own, so
    that mode is for development only.  'sealserve up', or --tee-socket with a daemon from
    'sealserve attest platform serve', launches the KeyService through a separate platform
    daemon instead.
    """
    loaded = guarded(lambda: load_settings(config))
    changes: dict[str, Any] = {}
    for name, value in (
        ("db_url", db),
        ("host", host),
        ("port", port),
        ("rate_limit_per_s", rate_limit_per_s),
        ("rate_limit_burst", rate_limit_burst),
        ("snp_cache", snp_cache),
        ("tpm_roots", tpm_roots),
        ("dcap_root", dcap_root),
        ("replica_reference_values", replica_reference_values),
    ):
        if value is not None:
            changes[name] = value
    ks = guarded(lambda: dataclasses.replace(loaded.keyservice, **changes))
    folder = data_dir if data_dir is not None else loaded.data_dir
    level = (log_level or loaded.log_level).upper()
    tls = guarded(lambda: tls_files(tls_cert, tls_key, loaded))
    code = guarded(
        lambda: _launch_and_wait(
            ks,
            folder,
            tee_socket,
            platform_key,
            level,
            workers,
            tls,
            join=join,
            gramine=gramine,
            gramine_command=gramine_command,
        )
    )
    raise typer.Exit(code)


@contextlib.contextmanager
def open_launcher(
    data_dir: Path,
    tee_socket: Path | None,
    *,
    gramine: Path | None = None,
    gramine_command: str | None = None,
) -> Iterator[Any]:
    """Gramine's ``gramine-sgx`` on the signed manifests in ``gramine``; else the TEE platform
    daemon at ``tee_socket``; else a simulated platform in ``data_dir``."""
    from sealserve.attest.tee import GramineLauncher, PlatformClient, SimulatedPlatform

    if gramine is not None:
        if tee_socket is not None:
            raise ValueError("--gramine and --tee-socket exclude each other")
        command = shlex.split(gramine_command) if gramine_command else ["gramine-sgx"]
        with GramineLauncher(gramine, command=command) as launcher:
            yield launcher
    elif tee_socket is not None:
        with PlatformClient(tee_socket) as client:
            yield client
    else:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with SimulatedPlatform(data_dir=data_dir) as platform:
            yield platform


def _launch_and_wait(
    ks: Any,
    data_dir: Path,
    tee_socket: Path | None,
    platform_key: Path | None,
    level: str,
    workers: int,
    tls: Any = None,
    join: str | None = None,
    gramine: Path | None = None,
    gramine_command: str | None = None,
) -> int:
    from sealserve.keyservice._launch import launch_keyservice

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    launchers = open_launcher(
        data_dir, tee_socket, gramine=gramine, gramine_command=gramine_command
    )
    with launchers as launcher:
        service = launch_keyservice(
            launcher,
            ks,
            data_dir=data_dir,
            platform_key=platform_key,
            log_level=level,
            stderr=sys.stderr.fileno(),
            workers=workers,
            tls=tls,
            join=join,
        )
        processes = service.processes
        stop = threading.Event()

        def stop_all() -> None:
            for process in processes:
                with contextlib.suppress(ProcessLookupError, OSError, SealserveError):
                    if process.returncode is None:
                        process.terminate()

        def on_signal(signum: int, _frame: object) -> None:
            stop.set()
            stop_all()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            pids = " ".join(str(p.pid) for p in processes)
            typer.echo(
                f"KeyService listening on {service.url}\n"
                f"  measurement   {service.measurement}\n"
                f"  keyservice id {service.keyservice_id}\n"
                f"  database      {service.database}\n"
                f"  data dir      {data_dir}\n"
                f"  processes     {len(processes)} (pid {pids})\n"
                "Ctrl-C stops it."
            )
            sys.stdout.flush()
            # Bounded by the processes: when one ends (crash or stop), the others are stopped.
            codes: list[int | None] = [None] * len(processes)
            while all(code is None for code in codes):
                codes = [p.wait(0.5 / len(processes)) for p in processes]
            stop_all()
            codes = [p.wait(30) for p in processes]
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for process in processes:
                process.close()
    if stop.is_set() and all(code in (0, -signal.SIGTERM) for code in codes):
        typer.echo("KeyService stopped.")
        return 0
    return 0 if all(code == 0 for code in codes) else 1


@app.command()
def measure(
    json_out: JsonOpt = False,
    config: Annotated[Path | None, typer.Option(help="A sealserve TOML settings file.")] = None,
    tpm_roots: TpmRootsOpt = None,
    dcap_root: DcapRootOpt = None,
    replica_reference_values: ReplicaRefsOpt = None,
) -> None:
    """Print the measurement a KeyService of the installed code has (what clients pin).

    It covers the measured settings (the challenge, release and replay windows, and which
    hardware evidence is trusted: SEV-SNP, the TPM roots, the DCAP root; the replicas' VM
    images) of --config, --tpm-roots, --dcap-root and --replica-reference-values, as
    'keyservice serve' launches it with the same ones.
    """
    from sealserve.attest import measure as measure_entry
    from sealserve.keyservice import measured_config

    loaded = guarded(lambda: load_settings(config))
    ks = loaded.keyservice
    if tpm_roots is not None:
        ks = guarded(lambda: dataclasses.replace(ks, tpm_roots=tpm_roots))
    if dcap_root is not None:
        ks = guarded(lambda: dataclasses.replace(ks, dcap_root=dcap_root))
    if replica_reference_values is not None:
        refs = replica_reference_values
        ks = guarded(lambda: dataclasses.replace(ks, replica_reference_values=refs))
    value = guarded(lambda: measure_entry("keyservice", config=measured_config(ks)))
    emit(json_out, {"entry": "keyservice", "measurement": value}, value)
