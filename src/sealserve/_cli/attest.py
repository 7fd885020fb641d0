"""``sealserve attest …``: measurements, hardware evidence, and the simulated TEE platform."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from sealserve._cli import _attest_hw
from sealserve._log import configure_logging, get_logger
from sealserve.attest import (
    ENTRIES,
    TCB_STATUSES,
    Evidence,
    Policy,
    TrustAnchors,
    measure,
    read_platform_public_key,
    report_data_for,
    verify_evidence,
)
from sealserve.attest._dcap import DcapRejected, check_dcap
from sealserve.attest._entries import entry_module
from sealserve.attest._wire import unb64
from sealserve.attest.tee import Launcher, PlatformClient, PlatformServer, SimulatedPlatform
from sealserve.crypto import HpkeKeyPair
from sealserve.errors import AttestationError, IdentityError, TeeError

__all__ = ["app"]
_log = get_logger(__name__)

app = typer.Typer(
    help="Attestation: code measurements, verification of DCAP quotes, SEV-SNP reports, TPM "
    "quotes and Azure CVMs, the simulated TEE platform.",
    no_args_is_help=True,
)
platform_app = typer.Typer(
    help="The simulated TEE platform (development and CI; not a security boundary).",
    no_args_is_help=True,
)
app.add_typer(platform_app, name="platform")
_attest_hw.register(app)

_JSON = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_config(pairs: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--config {pair!r} is not KEY=VALUE", 2)
        config[key] = value
    return config


def _check_entry(entry: str) -> None:
    try:
        entry_module(entry)
    except ValueError as exc:
        _fail(str(exc), 2)


@app.command("measure")
def measure_command(
    entry: Annotated[
        str, typer.Option("--entry", help=f"Entry to measure: {', '.join(sorted(ENTRIES))}.")
    ] = "runtime",
    config: Annotated[
        list[str] | None,
        typer.Option("--config", help="Measured launch config KEY=VALUE (repeatable)."),
    ] = None,
    as_json: _JSON = False,
) -> None:
    """Print the measurement of the installed code launched as ENTRY.

    It is computed exactly as the platform computes it for its snapshot: SHA-256 over every
    .py file of the package (sorted relative paths and file digests), the entry and the
    launch config; the same on every machine for the same code.

    Not what owners grant: a runtime's measured launch config pins the KeyService it
    trusts, and a runtime launched without that pin (the config measured here unless
    --config gives it) refuses to start (exit 78), so no runtime runs with this
    measurement.  For the runtime measurement to grant, run 'sealserve instance
    measurement' (it adds the KeyService pin).
    """
    _check_entry(entry)
    cfg = _parse_config(config or [])
    value = measure(entry, config=cfg)
    if as_json:
        doc = {"entry": entry, "module": ENTRIES[entry], "config": cfg, "measurement": value}
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(value)


@app.command("verify-dcap")
def verify_dcap_command(
    quote: Annotated[Path, typer.Argument(help="Raw SGX or TDX quote file.")],
    collateral: Annotated[Path, typer.Argument(help="Recorded collateral (JSON) for the quote.")],
    now: Annotated[
        int, typer.Option("--now", help="Verify as of this Unix time (the collateral is dated).")
    ],
    as_json: _JSON = False,
) -> None:
    """Verify a DCAP QUOTE offline with its COLLATERAL at --now.

    Exits 0 and prints status, advisories, measurement (MRENCLAVE or MRTD) and the debug
    flag when the quote verifies; exits 1 with a one-line reason when it does not.
    """
    if now < 0:
        _fail(f"--now must be a Unix time >= 0, got {now}", 2)
    try:
        quote_bytes = quote.read_bytes()
        collateral_bytes = collateral.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {exc.filename}: {exc.strerror}", 2)
    try:
        report = check_dcap(quote_bytes, collateral_bytes, now=now)
    except DcapRejected as exc:
        _fail(f"quote rejected: {exc}")
    summary = report.summary()
    doc = {key: summary[key] for key in ("status", "advisories", "measurement", "debug")}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table(title=f"{report.tee} quote verified", title_justify="left", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in ("status", "advisories", "measurement", "debug", "report_data", "signer"):
        value = summary[key]
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    Console().print(table)


@app.command("gramine-manifest")
def gramine_manifest_command(
    snapshot: Annotated[
        Path,
        typer.Option(
            "--snapshot",
            help="Directory of the measured code snapshot; created from the installed code "
            "when it does not exist (then keep it read-only: its hashes go into MRENCLAVE).",
        ),
    ],
    entry: Annotated[
        str, typer.Option("--entry", help=f"Entry: {', '.join(sorted(ENTRIES))}.")
    ] = "runtime",
    config: Annotated[
        list[str] | None,
        typer.Option("--config", help="Measured launch config KEY=VALUE (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the manifest here (default: stdout).")
    ] = None,
    collateral: Annotated[
        Path | None,
        typer.Option(
            "--collateral",
            help="The DCAP collateral file the enclave sends with its quotes (an allowed "
            "file: Intel signs it; refresh it before its nextUpdate).",
        ),
    ] = None,
) -> None:
    """Write the Gramine manifest template that runs ENTRY in an SGX enclave.

    Trusted files (hashed into MRENCLAVE by gramine-sgx-sign): Gramine's runtime, the system
    libraries, the interpreter and its standard library, the installed packages with their
    native libraries (onnxruntime, numpy, cryptography...), and the snapshot. The launch
    config is fixed in the manifest (measured); nothing is writable but memory. Then:
    gramine-manifest -Dentrypoint=... -Darch_libdir=... T.manifest.template > T.manifest;
    gramine-sgx-sign --manifest T.manifest --output T.manifest.sgx (prints MRENCLAVE, what
    policies pin); gramine-sgx T. See docs/deploy-sgx-gramine.md.
    """
    from sealserve.attest._gramine import gramine_manifest
    from sealserve.attest._measure import (
        installed_package_dir,
        measure_manifest,
        package_sources,
        source_manifest,
    )

    _check_entry(entry)
    cfg = _parse_config(config or [])
    sources = package_sources(installed_package_dir())
    if not snapshot.exists():
        for rel, data in sources:
            target = snapshot / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o444)
    else:
        sources = package_sources(snapshot / "sealserve")
    measurement = measure_manifest(source_manifest(sources), entry=entry, config=cfg)
    text = gramine_manifest(
        entry,
        snapshot=snapshot,
        config=cfg,
        collateral=None if collateral is None else collateral.resolve(),
    )
    text = f"# sealserve measurement of the snapshot as {entry}: {measurement}\n" + text
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out} ({entry}; snapshot {snapshot}; measurement {measurement})")


@app.command("launch-log")
def launch_log_command(
    events: Annotated[
        list[str],
        typer.Option("--event", help="ENTRY=MEASUREMENT (hex), in launch order (repeatable)."),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the launch log (JSON) here.")
    ] = None,
    as_json: _JSON = False,
) -> None:
    """A launch log and the registers it replays to: HOST_DATA for an SEV-SNP VM started
    for exactly these entries, and what PCR 23 and RTMR3 hold after these launches."""
    import hashlib

    from sealserve.attest._launch_log import LaunchEvent, register_of

    parsed = []
    for item in events:
        entry, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError("not ENTRY=MEASUREMENT")
            _check_entry(entry)
            parsed.append(LaunchEvent(entry=entry, measurement=bytes.fromhex(value)))
        except ValueError as exc:
            _fail(f"--event {item!r}: {exc}", 2)
    doc = {
        "version": 1,
        "events": [{"entry": e.entry, "measurement": e.measurement.hex()} for e in parsed],
    }
    if out is not None:
        out.write_text(json.dumps(doc, indent=1) + "\n")
    registers = {
        "host_data": hashlib.sha256(register_of(parsed, "sha256")).hexdigest(),
        "pcr.sha256": register_of(parsed, "sha256").hex(),
        "rtmr3": register_of(parsed, "sha384").hex(),
    }
    if as_json:
        typer.echo(json.dumps({**doc, "registers": registers}, indent=2))
    else:
        for name, value in registers.items():
            typer.echo(f"{name:11} {value}")


@app.command("probe")
def probe_command(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="The platform's data directory (its public key).")
    ],
    socket_path: Annotated[
        Path | None,
        typer.Option(
            "--socket", help="A running platform daemon; without it, an embedded platform."
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Launch in debug mode.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log to stderr, with failure reasons.")
    ] = False,
    as_json: _JSON = False,
) -> None:
    """Launch the attest-probe entry and verify its evidence end to end.

    A fresh key and nonce make the report_data; the probe obtains evidence over its private
    channel; the evidence is verified against the platform key published in --data-dir and a
    policy pinning the measurement of this installed code.  Exit 0 when it verifies.
    """
    if verbose:
        configure_logging("DEBUG")
    pair, nonce = HpkeKeyPair.generate(), os.urandom(32)
    report_data = report_data_for(pair.public_key_bytes(), nonce)
    try:
        with contextlib.ExitStack() as stack:
            launcher: Launcher
            if socket_path is not None:
                launcher = stack.enter_context(PlatformClient(socket_path))
            else:
                launcher = stack.enter_context(SimulatedPlatform(data_dir=data_dir))
            line = _run_probe(launcher, report_data, debug=debug)
            trust = TrustAnchors.from_data_dir(data_dir)
    except (TeeError, IdentityError) as exc:
        _fail(str(exc))
    try:
        evidence = Evidence.from_bytes(unb64(json.loads(line)["evidence"]))
    except (AttestationError, ValueError, KeyError):
        _fail("the probe printed no evidence")
    expected = measure("attest-probe")
    if evidence.measurement.hex() != expected:
        _fail(
            f"the probe ran code measuring {evidence.measurement.hex()}, but the installed "
            f"code measures {expected}: did the code change after the platform started?"
        )
    policy = Policy(measurements=frozenset({expected}), allow_debug=debug)
    try:
        claims = verify_evidence(
            evidence, policy, report_data=report_data, trust=trust, now=time.time()
        )
    except AttestationError:
        _fail(
            "the probe's evidence did not verify against the platform key in "
            f"'{data_dir}' (rerun with --verbose for the reason)"
        )
    doc: dict[str, Any] = {
        "verified": True,
        "format": claims.format,
        "entry": claims.entry,
        "measurement": claims.measurement,
        "debug": claims.debug,
        "tcb_status": claims.tcb_status,
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        for key, value in doc.items():
            typer.echo(f"{key:12} {value}")


def _run_probe(launcher: Launcher, report_data: bytes, *, debug: bool) -> str:
    read_end, write_end = os.pipe()
    try:
        process = launcher.launch(
            "attest-probe", args=[report_data.hex()], stdout=write_end, debug=debug
        )
    finally:
        os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as out:
            data = out.read()
        code = process.wait(30.0)
    finally:
        process.close()
    if code != 0:
        raise TeeError(f"the probe exited with status {code}")
    return data.decode("utf-8").strip()


@platform_app.command("serve")
def serve_command(
    socket_path: Annotated[Path, typer.Option("--socket", help="Unix socket to listen on.")],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Holds tee/platform.key (created on first run).")
    ],
    tcb_status: Annotated[
        str,
        typer.Option("--tcb-status", help="TCB status every evidence reports (to test policies)."),
    ] = "UpToDate",
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING.")] = "INFO",
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Settings file; its [attest] table picks the backend."),
    ] = None,
) -> None:
    """Run the TEE platform daemon (the measured launcher) until SIGTERM or SIGINT.

    With attest.backend = "simulated" (the default) it generates (once) the platform key in
    DATA_DIR/tee/platform.key, publishes the public key in DATA_DIR/tee/platform.pub (what
    verifiers pin), snapshots the installed code, and launches registered entries from that
    snapshot when a launcher asks on --socket. With a hardware backend (tsm, tpm, azure-cvm,
    or auto) it holds no key: it extends each entry's measurement into the hardware's launch
    register before launching it, and its processes' evidence comes from the hardware.
    """
    if tcb_status not in TCB_STATUSES:
        _fail(f"--tcb-status must be one of {', '.join(sorted(TCB_STATUSES))}", 2)
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}", 2)
    configure_logging(log_level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    from sealserve.attest._backends import open_backend
    from sealserve.config import load_settings

    try:
        backend = open_backend(load_settings(config).attest, data_dir=data_dir)
        with (
            SimulatedPlatform(
                data_dir=data_dir, tcb_status=tcb_status, backend=backend
            ) as platform,
            PlatformServer(platform, socket_path=socket_path),
        ):
            if backend is None:
                public_key = platform.public_key_bytes.hex()
                _log.event(
                    "attest.platform_serving", socket=str(socket_path), public_key=public_key
                )
                line = f"serving on {socket_path}; platform key {public_key}"
            else:
                _log.event(
                    "attest.platform_serving",
                    socket=str(socket_path),
                    backend=backend.name,
                    register=backend.register,
                )
                line = f"serving on {socket_path}; {backend.name}, launches in {backend.register}"
            if sys.stderr.isatty():
                typer.echo(line, err=True)
            while not stop.wait(1.0):
                pass
    except (TeeError, IdentityError, ValueError) as exc:
        _fail(str(exc))


@platform_app.command("public-key")
def public_key_command(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The platform's data directory.")],
) -> None:
    """Print the published platform public key (hex): the trust anchor verifiers pin."""
    try:
        typer.echo(read_platform_public_key(data_dir).hex())
    except TeeError as exc:
        _fail(str(exc))
