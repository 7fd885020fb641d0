"""``sealserve attest verify-snp | verify-tpm | verify-azure-cvm | snp-cache``: hardware evidence.

Each verifier works offline at ``--now``, takes its trust anchors and reference values as
options, prints what verified (``--json`` for a machine), and exits 0 only when everything
verified: 1 with a one-line reason when the evidence is refused, 2 for a usage mistake.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from sealserve.attest._amd import ARK_SPKI_SHA256, PRODUCTS, SnpAnchors, parse_cert_table
from sealserve.attest._azure import check_azure_cvm
from sealserve.attest._certs import Rejected
from sealserve.attest._reference import ReferenceValues, check_reference_values
from sealserve.attest._snp import SnpAttestation, check_snp
from sealserve.attest._snp_cache import fill_cache
from sealserve.attest._tpm import BANKS, TpmAnchors, TpmQuote, TpmSignature, check_tpm

__all__ = ["register"]

_NOW = Annotated[
    int, typer.Option("--now", help="Verify as of this Unix time (certificates are dated).")
]
_JSON = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
_REFS = Annotated[
    list[Path] | None,
    typer.Option(
        "--reference-values",
        help="Reference values JSON of a VM image (repeatable: any one must be satisfied).",
    ),
]
_CERTS = Annotated[
    list[Path] | None,
    typer.Option("--cert", help="An AMD certificate or PEM bundle: VCEK/VLEK, ASK, ARK."),
]
_CACHE = Annotated[
    Path | None,
    typer.Option("--cache", help="The AMD certificate cache 'snp-cache fill' wrote."),
]
_CRLS = Annotated[
    list[Path] | None, typer.Option("--crl", help="An AMD CRL (DER or PEM); honoured when given.")
]
_PINS = Annotated[
    list[str] | None,
    typer.Option("--ark-pin", help="PRODUCT=SHA256 of an ARK's public key, instead of AMD's."),
]
_MEASUREMENTS = Annotated[
    list[str] | None,
    typer.Option("--measurement", help="An accepted SEV-SNP launch measurement (hex, repeatable)."),
]
_DEBUG = Annotated[
    bool, typer.Option("--allow-debug", help="Accept a guest whose policy allows debugging.")
]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", 2)


def _hex(value: str, option: str, *, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        _fail(f"{option} {value!r} is not hex", 2)
    if size is not None and len(raw) != size:
        _fail(f"{option} must be {size} bytes of hex, got {len(raw)}", 2)
    return raw


def _references(paths: Sequence[Path]) -> list[ReferenceValues]:
    docs = []
    for path in paths:
        try:
            docs.append(ReferenceValues.from_file(path))
        except ValueError as exc:
            _fail(str(exc), 2)
    return docs


def _snp_anchors(
    certs: Sequence[Path], cache: Path | None, crls: Sequence[Path], pins: Sequence[str]
) -> tuple[SnpAnchors, list[bytes]]:
    ark_pins = dict(ARK_SPKI_SHA256)
    if pins:
        ark_pins = {}
        for pin in pins:
            product, sep, digest = pin.partition("=")
            if not sep or product not in PRODUCTS or len(digest) != 64:
                _fail(f"--ark-pin {pin!r} is not PRODUCT=<64 hex> ({', '.join(PRODUCTS)})", 2)
            ark_pins[product] = digest.lower()
    try:
        cached = SnpAnchors.from_cache(cache, ark_pins=ark_pins) if cache else None
        anchors = SnpAnchors(
            ark_pins=ark_pins,
            certificates=cached.certificates if cached else (),
            crls=(cached.crls if cached else ()) + tuple(_read(p) for p in crls),
        )
    except (ValueError, OSError) as exc:
        _fail(f"trust anchors: {exc}", 2)
    return anchors, [_read(p) for p in certs]


def _emit(doc: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for key, value in doc.items():
        if isinstance(value, dict):
            value = json.dumps(value, separators=(",", ":"))
        typer.echo(f"{key:18} {value}")


def _snp_checks(
    snp: SnpAttestation,
    *,
    measurements: Sequence[str],
    allow_debug: bool,
    report_data: str | None,
) -> None:
    report = snp.report
    if measurements and report.measurement.hex() not in {m.lower() for m in measurements}:
        raise Rejected("the launch measurement is not one of --measurement")
    if report.debug and not allow_debug:
        raise Rejected("the guest policy allows debugging (pass --allow-debug to accept it)")
    if report_data is not None and report.report_data != _hex(report_data, "--report-data"):
        raise Rejected("report_data is not --report-data")


def verify_snp_command(
    report: Annotated[Path, typer.Argument(help="The SEV-SNP attestation report (1,184 bytes).")],
    now: _NOW,
    cert: _CERTS = None,
    cert_table: Annotated[
        Path | None,
        typer.Option("--cert-table", help="The host's certificate table (configfs-tsm auxblob)."),
    ] = None,
    cache: _CACHE = None,
    crl: _CRLS = None,
    ark_pin: _PINS = None,
    measurement: _MEASUREMENTS = None,
    report_data: Annotated[
        str | None, typer.Option("--report-data", help="The expected report_data (hex, 64 B).")
    ] = None,
    allow_debug: _DEBUG = False,
    reference_values: _REFS = None,
    as_json: _JSON = False,
) -> None:
    """Verify an SEV-SNP REPORT offline at --now.

    The report's VCEK (or VLEK, as its signing-key field says) comes from --cert,
    --cert-table or --cache, and must chain through the ASK (or ASVK) to the ARK pinned for
    its product line (AMD's, or --ark-pin); CRLs given with --crl or in the cache are
    honoured.  Then the policy: a guest that allows debugging is refused unless
    --allow-debug; --measurement, --report-data and --reference-values (minimum TCB, VMPL,
    SMT, migration agent, host_data...) when given.  Exit 0 only when all of it holds.
    """
    if now < 0:
        _fail(f"--now must be a Unix time >= 0, got {now}", 2)
    anchors, certs = _snp_anchors(cert or [], cache, crl or [], ark_pin or [])
    refs = _references(reference_values or [])
    raw = _read(report)
    try:
        if cert_table is not None:
            certs += parse_cert_table(_read(cert_table))
        snp = check_snp(raw, now=now, anchors=anchors, certificates=certs)
        _snp_checks(
            snp, measurements=measurement or [], allow_debug=allow_debug, report_data=report_data
        )
        if refs:
            check_reference_values(refs, fmt="sev-snp", snp=snp, pcrs=None, mrtd=None, rtmrs=())
    except Rejected as exc:
        _fail(f"report rejected: {exc}")
    _emit(snp.summary(), as_json)


def _pcr_values(data: bytes, quote: TpmQuote) -> dict[str, dict[int, bytes]]:
    """PCR values from JSON ({"sha256": {"0": hex}}) or tpm2_quote's ``values`` output (the
    selected digests concatenated in selection order)."""
    sizes = {"sha256": 32, "sha384": 48, "sha512": 64}
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        doc = None
    if isinstance(doc, dict):
        if not set(doc) <= set(BANKS.values()):
            _fail(f"--pcrs: banks are {sorted(BANKS.values())}", 2)
        try:
            return {
                str(bank): {int(i): bytes.fromhex(v) for i, v in values.items()}
                for bank, values in doc.items()
            }
        except (ValueError, AttributeError, TypeError):
            _fail("--pcrs: not {bank: {index: hex}}", 2)
    out: dict[str, dict[int, bytes]] = {}
    at = 0
    for bank, indices in quote.selection:
        for index in indices:
            out.setdefault(bank, {})[index] = data[at : at + sizes[bank]]
            at += sizes[bank]
    if at != len(data):
        _fail("--pcrs: neither JSON nor the quote's selected values", 2)
    return out


def verify_tpm_command(
    message: Annotated[Path, typer.Argument(help="The quote's TPMS_ATTEST (tpm2_quote -m).")],
    signature: Annotated[Path, typer.Argument(help="Its TPMT_SIGNATURE (tpm2_quote -s).")],
    now: _NOW,
    pcrs: Annotated[
        Path,
        typer.Option("--pcrs", help="PCR values: JSON {bank: {index: hex}} or tpm2_quote -o."),
    ],
    nonce: Annotated[str, typer.Option("--nonce", help="The expected extraData (hex).")],
    ak_cert: Annotated[
        list[Path],
        typer.Option("--ak-cert", help="The AK's certificate, then intermediates (repeatable)."),
    ],
    root: Annotated[
        list[Path], typer.Option("--root", help="A trusted root for the AK chain (repeatable).")
    ],
    reference_values: _REFS = None,
    as_json: _JSON = False,
) -> None:
    """Verify a TPM 2.0 quote offline at --now.

    The AK certificate must chain to a --root; the quote (RSASSA, RSAPSS or ECDSA) must verify
    with its key, carry --nonce as extraData, and its PCR digest must be that of the --pcrs
    values; with --reference-values, the quoted PCRs must take pinned values.  Exit 0 only when
    all of it holds.
    """
    if now < 0:
        _fail(f"--now must be a Unix time >= 0, got {now}", 2)
    refs = _references(reference_values or [])
    try:
        anchors = TpmAnchors(roots=tuple(_read(p) for p in root))
    except ValueError as exc:
        _fail(f"--root: {exc}", 2)
    attest, sig = _read(message), _read(signature)
    try:
        quote = TpmQuote.parse(attest)
        values = _pcr_values(_read(pcrs), quote)
        verified = check_tpm(
            attest,
            sig,
            pcrs=values,
            nonce=_hex(nonce, "--nonce"),
            now=now,
            anchors=anchors,
            ak_chain=[_read(p) for p in ak_cert],
        )
        if refs:
            check_reference_values(
                refs, fmt="tpm-quote", snp=None, pcrs=verified.pcrs, mrtd=None, rtmrs=()
            )
    except Rejected as exc:
        _fail(f"quote rejected: {exc}")
    _emit(verified.summary(), as_json)


def _b64(text: str) -> bytes:
    """Base64 or base64url, padded or not (both appear in Azure's evidence)."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9+/_-]*={0,2}", text):
        raise ValueError("not base64")
    body = text.rstrip("=").replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _azure_inputs(
    doc: Any,
) -> tuple[bytes, bytes | None, bytes, TpmSignature, dict[str, dict[int, bytes]]]:
    """The parts of an Azure evidence JSON (the layout the test vectors record)."""
    try:
        hcl = _b64(doc["hcl_report"])
        vcek = _b64(doc["vcek"]) if doc.get("vcek") else None
        quote = doc["tpm_quote"]
        attest = bytes.fromhex(quote["message"])
        raw_sig = bytes.fromhex(quote["signature"])
        values = quote["pcrs"]
        if not isinstance(values, list) or len(values) > 24:
            raise ValueError("pcrs")
        pcrs = {"sha256": {i: bytes.fromhex(v) for i, v in enumerate(values)}}
    except (KeyError, TypeError, ValueError, binascii.Error, AttributeError) as exc:
        _fail(f"evidence JSON: missing or malformed field ({exc})", 2)
    try:
        signature = TpmSignature.parse(raw_sig)
    except Rejected:
        # Azure's guest tools hand out the RSASSA-PKCS1-v1_5 SHA-256 signature bytes alone.
        signature = TpmSignature(scheme="rsassa", hash="sha256", signature=raw_sig)
    return hcl, vcek, attest, signature, pcrs


def verify_azure_cvm_command(
    evidence: Annotated[
        Path,
        typer.Argument(
            help="JSON: hcl_report (base64url), vcek (base64 DER), tpm_quote {message, "
            "signature, pcrs} (hex)."
        ),
    ],
    now: _NOW,
    nonce: Annotated[str, typer.Option("--nonce", help="The quote's expected extraData (hex).")],
    cert: _CERTS = None,
    cache: _CACHE = None,
    crl: _CRLS = None,
    ark_pin: _PINS = None,
    measurement: _MEASUREMENTS = None,
    allow_debug: _DEBUG = False,
    reference_values: _REFS = None,
    as_json: _JSON = False,
) -> None:
    """Verify an Azure confidential VM's EVIDENCE offline at --now: the whole chain.

    AMD's root -> VCEK -> the SNP report in the HCL report -> its report_data is the hash of
    the runtime claims -> the vTPM attestation key in those claims -> the TPM quote over the
    PCRs and --nonce.  The ASK and ARK come from --cert or --cache.  Exit 0 only when all of it
    holds (and --measurement, --allow-debug and --reference-values' snp and tpm sections).
    """
    if now < 0:
        _fail(f"--now must be a Unix time >= 0, got {now}", 2)
    anchors, certs = _snp_anchors(cert or [], cache, crl or [], ark_pin or [])
    refs = _references(reference_values or [])
    try:
        doc = json.loads(_read(evidence))
    except (UnicodeDecodeError, ValueError):
        _fail(f"{evidence} is not JSON", 2)
    hcl, vcek, attest, signature, pcrs = _azure_inputs(doc)
    try:
        verified = check_azure_cvm(
            hcl,
            attest=attest,
            signature=signature,
            pcrs=pcrs,
            nonce=_hex(nonce, "--nonce"),
            now=now,
            anchors=anchors,
            certificates=certs + ([vcek] if vcek else []),
        )
        _snp_checks(
            verified.snp, measurements=measurement or [], allow_debug=allow_debug, report_data=None
        )
        if refs:
            check_reference_values(
                refs,
                fmt="azure-snp-vtpm",
                snp=verified.snp,
                pcrs=verified.pcrs,
                mrtd=None,
                rtmrs=(),
            )
    except Rejected as exc:
        _fail(f"evidence rejected: {exc}")
    _emit(verified.summary(), as_json)


def snp_cache_fill_command(
    from_dir: Annotated[
        Path, typer.Argument(help="Files downloaded from AMD's KDS (cert_chain, crl, VCEKs).")
    ],
    cache: Annotated[Path, typer.Option("--cache", help="The cache directory to fill.")],
    as_json: _JSON = False,
) -> None:
    """Copy into --cache the AMD certificates and CRLs in FROM_DIR that chain to AMD's ARKs.

    Download from AMD's KDS (https://kdsintf.amd.com) on a machine that may:
    /vcek/v1/<Milan|Genoa|Turin>/cert_chain, /vlek/v1/<product>/cert_chain,
    /vcek/v1/<product>/crl, and each chip's VCEK (/vcek/v1/<product>/<hwid>?blSPL=..).
    Verifiers read the cache and never reach the network.  Exit 1 if any file was refused.
    """
    if not from_dir.is_dir():
        _fail(f"{from_dir} is not a directory", 2)
    try:
        result = fill_cache(from_dir, cache)
    except OSError as exc:
        _fail(f"cannot write the cache: {exc}", 1)
    doc = {"stored": list(result.stored), "refused": [list(r) for r in result.refused]}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        for path in result.stored:
            typer.echo(f"stored   {path}")
        for name, reason in result.refused:
            typer.echo(f"refused  {name}: {reason}")
    if result.refused or not result.stored:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the hardware-evidence commands to ``sealserve attest``."""
    app.command("verify-snp")(verify_snp_command)
    app.command("verify-tpm")(verify_tpm_command)
    app.command("verify-azure-cvm")(verify_azure_cvm_command)
    cache_app = typer.Typer(
        help="The cache of AMD certificates and CRLs that SEV-SNP verification reads.",
        no_args_is_help=True,
    )
    cache_app.command("fill")(snp_cache_fill_command)
    app.add_typer(cache_app, name="snp-cache")
