"""The KeyService's measured launch config: the settings that weaken security when changed.

The challenge, release and replay windows and the revocation check bound travel in the
*measured* launch config (so a
client's pinned measurement covers them; an empty config means the defaults), and so does
which hardware evidence it accepts beyond its own platform's: whether SEV-SNP and Azure CVMs
(under AMD's ARK pins unless a test says otherwise), the roots a TPM attestation key must
chain to, and the root DCAP quotes chain to (Intel's unless a test says otherwise), so a host
cannot slip in a root of its own.  Everything else is an unmeasured
argument of the ``keyservice`` entry (:mod:`._main`), the operator's AMD certificate cache
included: what it holds must chain to a pinned ARK to count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sealserve.attest import ARK_SPKI_SHA256, ReferenceValues, SnpAnchors, TpmAnchors
from sealserve.config import KeyServiceSettings
from sealserve.errors import ConfigError, SealserveError
from sealserve.protocol._wire import b64decode, b64encode

__all__ = [
    "HARDWARE_TRUST_KEYS",
    "LIMIT_SETTINGS",
    "MEASURED_SETTINGS",
    "dcap_root",
    "hardware_anchors",
    "limit_args",
    "measured_config",
    "replica_reference_values",
    "settings_from",
]

#: Settings carried in the measured launch config when they differ from the defaults.
MEASURED_SETTINGS = ("challenge_ttl_s", "release_ttl_s", "replay_window_s", "revocation_check_s")
#: Launch config keys of the hardware evidence trusted (present only when not the default).
HARDWARE_TRUST_KEYS = (
    "accept_snp",
    "snp_ark_pins",
    "tpm_roots",
    "dcap_root",
    "replica_reference_values",
)
#: The request budgets (:mod:`._limits`) beyond the rate limit: unmeasured, passed to the
#: entry as ``--limit NAME=VALUE`` when they differ from the defaults.
LIMIT_SETTINGS = (
    "signed_requests_per_window",
    "revocations_per_s",
    "revocation_burst",
    "registrations_per_s",
    "registration_burst",
    "runtime_releases_per_s",
    "runtime_release_burst",
    "runtime_polls_per_s",
    "runtime_poll_burst",
)


def measured_config(settings: KeyServiceSettings) -> dict[str, str]:
    """The launch config for ``settings``: the security-relevant values that differ from the
    defaults (so default settings measure as the empty config that clients pin by default)."""
    defaults = KeyServiceSettings()
    config = {
        name: repr(float(getattr(settings, name)))
        for name in MEASURED_SETTINGS
        if getattr(settings, name) != getattr(defaults, name)
    }
    if not settings.accept_snp:
        config["accept_snp"] = "0"
    if settings.snp_ark_pins:
        config["snp_ark_pins"] = ",".join(sorted(filter(None, settings.snp_ark_pins.split(","))))
    if settings.tpm_roots is not None:
        config["tpm_roots"] = _encode_roots(settings.tpm_roots, "tpm_roots")
    if settings.dcap_root is not None:
        root = _encode_roots(settings.dcap_root, "dcap_root")
        if "," in root:
            raise ConfigError(
                f"Config 'keyservice.dcap_root' names '{settings.dcap_root}', which holds more "
                "than one certificate. DCAP quotes chain to one root."
            )
        config["dcap_root"] = root
    if settings.replica_reference_values is not None:
        docs = _read_reference_values(settings.replica_reference_values)
        config["replica_reference_values"] = json.dumps(
            [doc.to_dict() for doc in docs], sort_keys=True, separators=(",", ":")
        )
    return config


def _read_reference_values(path: Path) -> tuple[ReferenceValues, ...]:
    """The reference values in a JSON file: one document, or a list of them."""
    name = "keyservice.replica_reference_values"
    try:
        doc = json.loads(Path(path).read_text())
        docs = doc if isinstance(doc, list) else [doc]
        out = tuple(ReferenceValues.from_dict(d) for d in docs)
    except OSError as exc:
        raise ConfigError(f"Config '{name}' names '{path}', which cannot be read: {exc}.") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"Config '{name}' names '{path}', which holds no reference values ({exc})."
        ) from None
    if not out:
        raise ConfigError(f"Config '{name}' names '{path}', which holds an empty list.")
    return out


def replica_reference_values(config: Mapping[str, str]) -> tuple[ReferenceValues, ...]:
    """The replica platforms a measured launch config pins (none: the empty tuple)."""
    text = config.get("replica_reference_values")
    if not text:
        return ()
    return tuple(ReferenceValues.from_dict(d) for d in json.loads(text))


def _encode_roots(path: Path, name: str) -> str:
    """The certificates of a PEM (or DER) file, as comma-separated base64url DER."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from sealserve.attest._certs import Rejected, load_certificates

    try:
        certs = load_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"Config 'keyservice.{name}' names '{path}', which cannot be read: {exc.strerror}."
        ) from None
    except Rejected as exc:
        raise ConfigError(
            f"Config 'keyservice.{name}' names '{path}', which holds no certificate ({exc})."
        ) from None
    return ",".join(sorted(b64encode(c.public_bytes(Encoding.DER)) for c in certs))


def dcap_root(config: Mapping[str, str]) -> bytes | None:
    """The DCAP root a measured launch config names (DER), or None for Intel's."""
    text = config.get("dcap_root")
    return b64decode(text) if text else None


def hardware_anchors(
    config: Mapping[str, str], snp_cache: Path | None
) -> tuple[SnpAnchors | None, TpmAnchors | None]:
    """The SEV-SNP and TPM anchors a measured launch config names (with the operator's cache
    of AMD certificates, which must chain to the pinned ARKs to count); :func:`dcap_root`
    names the DCAP root."""
    snp: SnpAnchors | None = None
    if config.get("accept_snp", "1") != "0":
        pins: Mapping[str, str] = ARK_SPKI_SHA256
        if config.get("snp_ark_pins"):
            pins = dict(p.split("=", 1) for p in config["snp_ark_pins"].split(","))
        snp = (
            SnpAnchors.from_cache(snp_cache, ark_pins=pins)
            if snp_cache is not None
            else SnpAnchors(ark_pins=pins)
        )
    tpm = None
    if config.get("tpm_roots"):
        tpm = TpmAnchors(roots=tuple(b64decode(r) for r in config["tpm_roots"].split(",")))
    return snp, tpm


def limit_args(settings: KeyServiceSettings) -> list[str]:
    """``--limit NAME=VALUE`` arguments of the entry for the budgets that are not defaults."""
    defaults = KeyServiceSettings()
    out: list[str] = []
    for name in LIMIT_SETTINGS:
        value = getattr(settings, name)
        if value != getattr(defaults, name):
            out += ["--limit", f"{name}={value!r}"]
    return out


def _limits(pairs: list[str] | None) -> dict[str, Any]:
    defaults = KeyServiceSettings()
    out: dict[str, Any] = {}
    for pair in pairs or ():
        name, _, text = pair.partition("=")
        if name not in LIMIT_SETTINGS:
            raise SealserveError(f"--limit {pair!r}: {name!r} is not one of {LIMIT_SETTINGS}")
        kind = type(getattr(defaults, name))
        try:
            out[name] = kind(text)
        except ValueError:
            raise SealserveError(f"--limit {pair!r}: not a valid {kind.__name__}") from None
    return out


def settings_from(args: argparse.Namespace, config: Mapping[str, str]) -> KeyServiceSettings:
    """The service settings: unmeasured ones from the arguments, measured ones from config."""
    unknown = sorted(set(config) - set(MEASURED_SETTINGS) - set(HARDWARE_TRUST_KEYS))
    if unknown:
        raise SealserveError(f"launch config has unknown keys {unknown}")
    measured: dict[str, Any] = {
        name: float(config[name]) for name in MEASURED_SETTINGS if name in config
    }
    settings = KeyServiceSettings(
        host=args.host,
        port=args.port,
        db_url=args.db,
        max_body_bytes=args.max_body_bytes,
        rate_limit_per_s=args.rate_limit_per_s,
        rate_limit_burst=args.rate_limit_burst,
        accept_snp=config.get("accept_snp", "1") != "0",
        snp_ark_pins=config.get("snp_ark_pins", ""),
        snp_cache=args.snp_cache,
        **_limits(getattr(args, "limit", None)),
    )
    return dataclasses.replace(settings, **measured)
