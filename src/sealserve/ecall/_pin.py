"""The runtime's measured launch config: which KeyService it will trust.

The runtime verifies the KeyService's evidence before it believes any release (else an
untrusted host could hand it keys of its own making).  What it requires — the KeyService's
policy and the platform keys that may sign evidence — is passed as the *measured* launch
config, so it is part of the runtime's measurement: a runtime pinned to another KeyService
has another measurement, and owners' grants (which pin runtime measurements) do not cover it.

::

    config = runtime_launch_config(keyservice_policy=policy, trust=anchors)
    measurement = launcher.measurement("runtime", config=config)   # what grants pin
    process = launcher.launch("runtime", config=config, ...)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Final

from sealserve.attest import Policy, SnpAnchors, TpmAnchors, TrustAnchors
from sealserve.errors import ConfigError

__all__ = [
    "KEYSERVICE_POLICY_KEY",
    "PLATFORM_KEYS_KEY",
    "pin_from_launch_config",
    "runtime_launch_config",
]

#: Launch config key: the KeyService policy (``Policy.to_dict()`` as canonical JSON).
KEYSERVICE_POLICY_KEY: Final = "keyservice_policy"
#: Launch config key: comma-separated hex Ed25519 keys of simulated platforms to trust.
PLATFORM_KEYS_KEY: Final = "platform_keys"
_DCAP_KEY: Final = "accept_dcap"
#: "0" when the runtime refuses a KeyService attested by SEV-SNP or an Azure CVM (absent:
#: accepted, under AMD's ARKs, if the policy's reference values admit it).
_SNP_KEY: Final = "accept_snp"
#: Comma-separated base64url DER roots a TPM-attested KeyService's AK must chain to.
_TPM_ROOTS_KEY: Final = "tpm_roots"
#: ``PRODUCT=SHA256`` pins of other ARKs than AMD's, comma-separated (tests, like the
#: KeyService's ``snp_ark_pins``); measured, so such a runtime has another measurement.
_SNP_PINS_KEY: Final = "snp_ark_pins"
#: Base64url DER of the root DCAP quotes must chain to instead of Intel's (tests, like the
#: KeyService's ``dcap_root``); measured, so such a runtime has another measurement.
_DCAP_ROOT_KEY: Final = "dcap_root"
_KEYS: Final = frozenset(
    {
        KEYSERVICE_POLICY_KEY,
        PLATFORM_KEYS_KEY,
        _DCAP_KEY,
        _SNP_KEY,
        _TPM_ROOTS_KEY,
        _SNP_PINS_KEY,
        _DCAP_ROOT_KEY,
    }
)


def runtime_launch_config(*, keyservice_policy: Policy, trust: TrustAnchors) -> dict[str, str]:
    """The measured launch config of a runtime that trusts this KeyService pin."""
    if not isinstance(keyservice_policy, Policy):
        raise TypeError(
            f"keyservice_policy must be a Policy, got {type(keyservice_policy).__name__}"
        )
    if not isinstance(trust, TrustAnchors):
        raise TypeError(f"trust must be TrustAnchors, got {type(trust).__name__}")
    if trust.snp is not None and trust.snp != SnpAnchors(ark_pins=trust.snp.ark_pins):
        raise ValueError("a runtime pin cannot carry certificates or CRLs: evidence brings them")
    config = {
        KEYSERVICE_POLICY_KEY: json.dumps(
            keyservice_policy.to_dict(), sort_keys=True, separators=(",", ":")
        ),
        PLATFORM_KEYS_KEY: ",".join(sorted(k.hex() for k in trust.simulated_platform_keys)),
        _DCAP_KEY: "1" if trust.accept_dcap else "0",
    }
    # Present only when they differ from the defaults, so that existing pins measure the same.
    if trust.snp is None:
        config[_SNP_KEY] = "0"
    if trust.tpm is not None and trust.tpm.roots:
        config[_TPM_ROOTS_KEY] = ",".join(sorted(_b64(r) for r in trust.tpm.roots))
    if trust.snp is not None and trust.snp != SnpAnchors():
        config[_SNP_PINS_KEY] = ",".join(f"{k}={v}" for k, v in sorted(trust.snp.ark_pins.items()))
    if trust.dcap_root_ca_der is not None:
        config[_DCAP_ROOT_KEY] = _b64(trust.dcap_root_ca_der)
    return config


def pin_from_launch_config(config: Mapping[str, str]) -> tuple[Policy, TrustAnchors]:
    """The (policy, trust anchors) a runtime launched with ``config`` requires of the
    KeyService; :class:`~sealserve.errors.ConfigError` if the config is not one."""
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ConfigError(f"the runtime's launch config has unknown keys {unknown}")
    try:
        policy = Policy.from_dict(json.loads(config[KEYSERVICE_POLICY_KEY]))
        keys = frozenset(
            bytes.fromhex(part) for part in config.get(PLATFORM_KEYS_KEY, "").split(",") if part
        )
        roots = tuple(_unb64(r) for r in config.get(_TPM_ROOTS_KEY, "").split(",") if r)
        dcap_root = config.get(_DCAP_ROOT_KEY)
        trust = TrustAnchors(
            simulated_platform_keys=keys,
            accept_dcap=config.get(_DCAP_KEY, "0") == "1",
            dcap_root_ca_der=_unb64(dcap_root) if dcap_root else None,
            snp=None if config.get(_SNP_KEY, "1") == "0" else _snp_anchors(config),
            tpm=TpmAnchors(roots=roots) if roots else None,
        )
    except KeyError:
        raise ConfigError(
            f"the runtime's launch config has no {KEYSERVICE_POLICY_KEY!r}: a runtime must be "
            "launched with the KeyService it trusts (runtime_launch_config)"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the runtime's launch config is invalid: {exc}") from exc
    return policy, trust


def _snp_anchors(config: Mapping[str, str]) -> SnpAnchors:
    pins = config.get(_SNP_PINS_KEY)
    if not pins:
        return SnpAnchors()
    return SnpAnchors(ark_pins=dict(pin.split("=", 1) for pin in pins.split(",")))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"a root certificate is not base64url: {exc}") from None
