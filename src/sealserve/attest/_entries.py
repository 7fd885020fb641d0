"""The fixed registry of programs the platform will launch, by name.

A launcher names an entry, never a module or a path: the platform maps the name to a module
inside its code snapshot.  Nothing here imports those modules (they belong to layers above).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = ["ENTRIES", "TEMPLATE_ENTRIES", "entry_module"]

#: Entry name -> module run as ``__main__`` from the snapshot.
ENTRIES: Final = MappingProxyType(
    {
        # A diagnostic probe: prints its evidence (``sealserve attest probe``).
        "attest-probe": "sealserve.attest._probe",
        # The KeyService, attested like the runtime.
        "keyservice": "sealserve.keyservice._main",
        # The sealed runtime (SeMIRT).
        "runtime": "sealserve.runtime._main",
    }
)


#: Entries the platform keeps a measured template of once launched (launches then fork from
#: it: see ``sealserve.attest._templates``): those started again and again, on the hot path.
TEMPLATE_ENTRIES: Final = frozenset({"runtime"})


def entry_module(entry: str) -> str:
    """The module of ``entry``; ``ValueError`` naming the known entries otherwise."""
    try:
        return ENTRIES[entry]
    except (KeyError, TypeError):
        raise ValueError(
            f"entry must be one of {', '.join(sorted(ENTRIES))}; got {entry!r}"
        ) from None
