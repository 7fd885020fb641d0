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

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealserve._log import get_logger
from sealserve.crypto import (
    HpkeKeyPair,
    HpkeSuite,
    Identity,
    SymmetricKey,
    canonical_encode,
    seal,
    unseal,
    wrap,
)
from sealserve.errors import InvalidEnvelope, KeyServiceError, SealedStateError
from sealserve.keyservice._store import Store

__all__ = ["MASTER_KEY_PURPOSE", "Vault", "master_key_fingerprint", "open_master_key"]

#: The purpose of the sealing key the master key is sealed under.
MASTER_KEY_PURPOSE: Final = "keyservice/master-key"
_STATE_NAME: Final = "master-key"
#: Copies sealed by the replicas that joined on other nodes: ``master-key@<16 hex>``.
_NODE_STATE_PREFIX: Final = "master-key@"
_FINGERPRINT_STATE: Final = "master-key-id"
_log = get_logger(__name__)
_KEY_BYTES = 32


def open_master_key(
    store: Store,
    sealing_key: bytes | None,
    *,
    now: float,
    join: Callable[[], bytes] | None = None,
) -> SymmetricKey:
    """The KeyService's master key, from the first of:

    1. the copy in ``store`` sealed under ``sealing_key`` (the one its creator sealed, or the
       one this node sealed when it joined);
    2. ``join``: a running KeyService of the same measurement hands it over after attesting
       both ways (:mod:`._replicas`); it must be the database's (its fingerprint), and is then
       sealed under ``sealing_key`` for this node's next start (a node without a sealing key,
       TDX, keeps it in memory only and joins again after a restart);
    3. a new one, generated here and sealed under ``sealing_key``, when the database has none
       yet and holds no sealed record.

    :class:`~sealserve.errors.SealedStateError` otherwise: a master key that does not unseal
    here with no peer to join, sealed records without a master key, no sealing key and no peer.
    """
    wrapping = None if sealing_key is None else SymmetricKey.from_bytes(bytes(sealing_key))
    if wrapping is not None:
        assert sealing_key is not None
        for name in (_STATE_NAME, _node_state(sealing_key)):
            sealed = store.get_state(name)
            if sealed is None:
                continue
            try:
                raw = unseal(wrapping, sealed, context=_master_context())
            except InvalidEnvelope:
                continue
            return _checked(store, raw, now=now)
    if join is not None:
        key = _joined(store, join(), now=now)
        if wrapping is not None:
            assert sealing_key is not None
            store.put_state_once(
                _node_state(sealing_key),
                seal(wrapping, key.to_bytes(), context=_master_context()),
                at=now,
            )
        _log.event("vault.master_key_joined", sealed_here=wrapping is not None)
        return key
    if store.get_state(_STATE_NAME) is None:
        if store.holds_sealed_records():
            raise SealedStateError(
                "the KeyService database holds sealed keys but no sealed master key: they were "
                "written under a master key this KeyService cannot recover (a sealserve before "
                "0.x kept it in a host-readable file). Refusing to start; point --db at a new "
                "database and upload the keys again."
            )
        if wrapping is None:
            raise SealedStateError(
                "this KeyService has no sealing key (a TDX node) and no running KeyService to "
                "join: start the first KeyService of this database on a node with a sealing "
                "key (SGX, SEV-SNP, a TPM), then join it here with --join URL"
            )
        generated = SymmetricKey.generate()
        sealed = store.put_state_once(
            _STATE_NAME, seal(wrapping, generated.to_bytes(), context=_master_context()), at=now
        )
        try:
            raw = unseal(wrapping, sealed, context=_master_context())
        except InvalidEnvelope:  # another process created another one first, elsewhere
            raise _sealed_elsewhere() from None
        _log.event("vault.master_key_created")
        return _checked(store, raw, now=now)
    raise _sealed_elsewhere()


def _sealed_elsewhere() -> SealedStateError:
    _log.event("vault.master_key_refused", level=logging.ERROR)
    return SealedStateError(
        "the KeyService's data is sealed under another key: its master key does not unseal "
        "with this KeyService's sealing key (another sealserve build, another platform or "
        "machine, or a debug launch). Refusing to start rather than replace it; run the "
        "KeyService that sealed it, join a running KeyService of the same build with --join "
        "URL, or point --db at another database."
    )


def master_key_fingerprint(key: SymmetricKey) -> bytes:
    """What the database records of its master key (16 bytes derived from it: they name the
    key and reveal nothing of it), so a replica can tell whether a key is this database's."""
    return Vault(key).derive("master-key-id")[:16]


def _checked(store: Store, raw: bytes, *, now: float) -> SymmetricKey:
    """The master key ``raw``, after recording its fingerprint (first start) or checking it."""
    if len(raw) != _KEY_BYTES:  # pragma: no cover - only we seal this blob
        raise SealedStateError("the sealed master key has the wrong size")
    key = SymmetricKey.from_bytes(raw)
    stored = store.put_state_once(_FINGERPRINT_STATE, master_key_fingerprint(key), at=now)
    if stored != master_key_fingerprint(key):
        raise SealedStateError(
            "the database names another master key than the one sealed in it: its state was "
            "tampered with. Refusing to start."
        )
    return key


def _joined(store: Store, raw: bytes, *, now: float) -> SymmetricKey:
    if len(raw) != _KEY_BYTES:
        raise SealedStateError("the peer KeyService handed over a master key of the wrong size")
    key = SymmetricKey.from_bytes(raw)
    stored = store.get_state(_FINGERPRINT_STATE)
    if stored is None:
        raise SealedStateError(
            "the database has no master key yet, so no running KeyService serves it: start the "
            "first KeyService of this database (on a node with a sealing key) before joining"
        )
    if stored != master_key_fingerprint(key):
        raise SealedStateError(
            "the peer KeyService's master key is not this database's: it serves another "
            "database (check --db and --join)"
        )
    return key


def _node_state(sealing_key: bytes) -> str:
    """The state row of this node's sealed copy: named by a digest of its sealing key."""
    digest = hmac.digest(bytes(sealing_key), b"sealserve/keyservice/node-id", "sha256")
    return f"{_NODE_STATE_PREFIX}{digest[:8].hex()}"


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

    def wrap_master_key(
        self, public_key: bytes, *, info: Mapping[str, str], suite: HpkeSuite
    ) -> bytes:
        """The master key HPKE-wrapped to ``public_key``, binding ``info``: the one way it
        leaves the vault, to a replica that attested with this KeyService's own measurement
        (:mod:`._replicas`)."""
        return wrap(public_key, self._key.to_bytes(), info=info, suite=suite)

    def instance_keys(self) -> tuple[HpkeKeyPair, Identity]:
        """The KeyService's HPKE key pair and signing identity, derived from the master key:
        every process that holds it is the same attested KeyService."""
        hpke = HpkeKeyPair.from_private_bytes(self.derive("hpke"))
        signing = Ed25519PrivateKey.from_private_bytes(self.derive("signing"))
        return hpke, Identity(signing)

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
