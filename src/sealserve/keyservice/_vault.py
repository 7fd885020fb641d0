"""The master key and what it seals: every key and grant the KeyService keeps at rest.

The master key is born inside the attested KeyService process and is never seen outside it:
the first KeyService to open a database generates it, seals it under its TEE **sealing key**
(:func:`~sealserve.attest.local_sealing_key`: bound to the KeyService's measurement and to the
platform, see :mod:`sealserve.attest._sealing`) and stores that sealed blob in the database
(``keyservice_state``).  Every later start unseals it.  No argument, file or environment
variable can supply it, so the host that launches the genuine KeyService cannot choose its
secrets (it used to: ``--master-key-file`` and ``SEALSERVE_KEYSERVICE_MASTER_KEY``).

:func:`open_master_key` refuses to start when the stored blob does not unseal (the data was
sealed under another key: another KeyService build, another platform, a debug launch), and
when the database holds sealed records but no master key (they were written under a key this
KeyService cannot recover); it never replaces a master key.

Each record is sealed with a context naming its kind and the row it belongs to, so a record
copied to another row (another model, user or version) does not unseal there.

The master key also derives (HKDF-SHA256, one label per use) the KeyService's own long-term
secrets: its HPKE and signing keys, and the key that authenticates its challenges.  Every
process that unseals the same master key is therefore the same KeyService: several processes
of one build on one platform (the same sealing key) serve one database as one identity.
Replicas on other machines have other sealing keys; see docs/keyservice.md, section 8.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealserve._log import get_logger
from sealserve.crypto import SymmetricKey, canonical_encode, seal, unseal
from sealserve.errors import InvalidEnvelope, KeyServiceError, SealedStateError
from sealserve.keyservice._store import Store

__all__ = ["MASTER_KEY_PURPOSE", "Vault", "open_master_key"]

#: The purpose of the sealing key the master key is sealed under.
MASTER_KEY_PURPOSE: Final = "keyservice/master-key"
_STATE_NAME: Final = "master-key"
_log = get_logger(__name__)
_KEY_BYTES = 32


def open_master_key(store: Store, sealing_key: bytes, *, now: float) -> SymmetricKey:
    """The master key sealed in ``store`` under ``sealing_key``; generated here (and sealed
    there) when the database has none yet and holds no sealed record.

    :class:`~sealserve.errors.SealedStateError` when the stored master key does not unseal
    under ``sealing_key``, or when sealed records exist without a master key.
    """
    wrapping = SymmetricKey.from_bytes(bytes(sealing_key))
    sealed = store.get_state(_STATE_NAME)
    if sealed is None:
        if store.holds_sealed_records():
            raise SealedStateError(
                "the KeyService database holds sealed keys but no sealed master key: they were "
                "written under a master key this KeyService cannot recover (a sealserve before "
                "0.x kept it in a host-readable file). Refusing to start; point --db at a new "
                "database and upload the keys again."
            )
        key = SymmetricKey.generate()
        sealed = store.put_state_once(
            _STATE_NAME, seal(wrapping, key.to_bytes(), context=_master_context()), at=now
        )
        _log.event("vault.master_key_created")
    try:
        raw = unseal(wrapping, sealed, context=_master_context())
    except InvalidEnvelope:
        _log.event("vault.master_key_refused", level=logging.ERROR)
        raise SealedStateError(
            "the KeyService's data is sealed under another key: its master key does not unseal "
            "with this KeyService's sealing key (another sealserve build, another platform or "
            "machine, or a debug launch). Refusing to start rather than replace it; run the "
            "KeyService that sealed it, or point --db at another database."
        ) from None
    if len(raw) != _KEY_BYTES:  # pragma: no cover - only we seal this blob
        raise SealedStateError("the sealed master key has the wrong size")
    return SymmetricKey.from_bytes(raw)


def _master_context() -> dict[str, str]:
    return {"purpose": "sealserve/keyservice/master-key"}


class Vault:
    """Seals and unseals the KeyService's records under the master key."""

    def __init__(self, master_key: SymmetricKey) -> None:
        if not isinstance(master_key, SymmetricKey):
            raise TypeError(f"master_key must be a SymmetricKey, got {type(master_key).__name__}")
        self._key = master_key

    def seal(self, kind: str, row: Mapping[str, str], plaintext: bytes) -> bytes:
        return seal(self._key, plaintext, context=_context(kind, row))

    def unseal(self, kind: str, row: Mapping[str, str], sealed: bytes) -> bytes:
        """The plaintext of a record; :class:`KeyServiceError` when it does not unseal (a
        tampered or moved row, or another master key)."""
        try:
            return unseal(self._key, sealed, context=_context(kind, row))
        except InvalidEnvelope as exc:
            _log.event("vault.record_rejected", kind=kind)
            raise KeyServiceError(
                f"a {kind} record does not unseal under the master key: the database was "
                "tampered with or written under another master key"
            ) from exc

    def derive(self, label: str) -> bytes:
        """32 bytes derived from the master key for ``label`` (distinct labels never derive
        the same bytes).  For the KeyService's own keys only; never sent anywhere."""
        if not isinstance(label, str) or not label:
            raise ValueError(f"label must be a non-empty string, got {label!r}")
        info = canonical_encode({"purpose": "sealserve/keyservice/derived", "label": label})
        hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info)
        return hkdf.derive(self._key.to_bytes())

    def __repr__(self) -> str:
        return "Vault(<master key withheld>)"


def _context(kind: str, row: Mapping[str, str]) -> dict[str, str]:
    context = {"purpose": f"sealserve/keyservice/{kind}"}
    context.update(row)
    return context
