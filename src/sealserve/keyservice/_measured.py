"""The KeyService's measured launch config: the settings that weaken security when changed.

The challenge, release and replay windows travel in the *measured* launch config (so a
client's pinned measurement covers them; an empty config means the defaults); everything else
is an unmeasured argument of the ``keyservice`` entry (:mod:`._main`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from sealserve.config import KeyServiceSettings
from sealserve.errors import SealserveError

__all__ = ["MEASURED_SETTINGS", "measured_config", "settings_from"]

#: Settings carried in the measured launch config when they differ from the defaults.
MEASURED_SETTINGS = ("challenge_ttl_s", "release_ttl_s", "replay_window_s")


def measured_config(settings: KeyServiceSettings) -> dict[str, str]:
    """The launch config for ``settings``: the security-relevant values that differ from the
    defaults (so default settings measure as the empty config that clients pin by default)."""
    defaults = KeyServiceSettings()
    return {
        name: repr(float(getattr(settings, name)))
        for name in MEASURED_SETTINGS
        if getattr(settings, name) != getattr(defaults, name)
    }


def settings_from(args: argparse.Namespace, config: Mapping[str, str]) -> KeyServiceSettings:
    """The service settings: unmeasured ones from the arguments, measured ones from config."""
    unknown = sorted(set(config) - set(MEASURED_SETTINGS))
    if unknown:
        raise SealserveError(f"launch config has unknown keys {unknown}")
    measured = {name: float(value) for name, value in config.items()}
    return KeyServiceSettings(
        host=args.host,
        port=args.port,
        db_url=args.db,
        max_body_bytes=args.max_body_bytes,
        rate_limit_per_s=args.rate_limit_per_s,
        rate_limit_burst=args.rate_limit_burst,
        **measured,
    )
