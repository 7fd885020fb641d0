"""The KeyService: attested key release, access control and the audit log.

Model owners give it model keys, users give it request keys, owners grant users access under a
runtime policy, and it releases keys only to a runtime whose attestation evidence satisfies
that policy, HPKE-wrapped to the runtime's fresh public key.  The protocol is in
``docs/keyservice.md``.

Three audiences, one package:

* the service: :class:`KeyService`, :func:`create_app`, :class:`Store`, :func:`run_keyservice`;
* the runtime (inside the TEE): :class:`ReleaseSession`, :func:`parse_challenge`;
* everyone who must trust the KeyService first: :func:`verify_keyservice`.

Names are imported on first use, so a runtime that needs only the release helpers does not
load the web framework or the database layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealserve import _lazy
from sealserve.keyservice import _wire as wire
from sealserve.keyservice._wire import (
    API_PREFIX,
    DENIAL_BODY,
    RESPONSE_SIGNATURE_HEADER,
    model_id,
    split_model_id,
)

if TYPE_CHECKING:
    from sealserve.keyservice._app import create_app
    from sealserve.keyservice._attested import (
        AttestedKeyService,
        attestation_nonce,
        default_keyservice_pin,
        verify_keyservice,
    )
    from sealserve.keyservice._evidence import EvidenceVerifier
    from sealserve.keyservice._judge import EvidenceJudge, VerifiedEvidence
    from sealserve.keyservice._launch import LaunchedKeyService, launch_keyservice
    from sealserve.keyservice._main import measured_config
    from sealserve.keyservice._releaser import Denied
    from sealserve.keyservice._runtime import (
        Release,
        ReleasedKeys,
        ReleaseSession,
        parse_challenge,
    )
    from sealserve.keyservice._server import (
        database_url,
        keyservice_dir,
        open_keyservice,
        run_keyservice,
    )
    from sealserve.keyservice._service import EvidenceSource, KeyService, Throttled
    from sealserve.keyservice._store import AuditEntry, Store, StoreState, sqlite_url
    from sealserve.keyservice._vault import MASTER_KEY_PURPOSE, Vault, open_master_key

__all__ = [
    "API_PREFIX",
    "AttestedKeyService",
    "AuditEntry",
    "DENIAL_BODY",
    "Denied",
    "EvidenceJudge",
    "EvidenceSource",
    "EvidenceVerifier",
    "KeyService",
    "LaunchedKeyService",
    "MASTER_KEY_PURPOSE",
    "RESPONSE_SIGNATURE_HEADER",
    "Release",
    "ReleaseSession",
    "ReleasedKeys",
    "Store",
    "StoreState",
    "Throttled",
    "Vault",
    "VerifiedEvidence",
    "attestation_nonce",
    "create_app",
    "database_url",
    "default_keyservice_pin",
    "keyservice_dir",
    "launch_keyservice",
    "measured_config",
    "model_id",
    "open_keyservice",
    "open_master_key",
    "parse_challenge",
    "run_keyservice",
    "split_model_id",
    "sqlite_url",
    "verify_keyservice",
    "wire",
]

__getattr__, __dir__ = _lazy.exports(
    __name__,
    globals(),
    {
        "create_app": "_app",
        "AttestedKeyService": "_attested",
        "attestation_nonce": "_attested",
        "default_keyservice_pin": "_attested",
        "verify_keyservice": "_attested",
        "EvidenceJudge": "_judge",
        "EvidenceVerifier": "_evidence",
        "VerifiedEvidence": "_judge",
        "Denied": "_releaser",
        "LaunchedKeyService": "_launch",
        "launch_keyservice": "_launch",
        "measured_config": "_main",
        "Release": "_runtime",
        "ReleasedKeys": "_runtime",
        "ReleaseSession": "_runtime",
        "parse_challenge": "_runtime",
        "database_url": "_server",
        "keyservice_dir": "_server",
        "open_keyservice": "_server",
        "run_keyservice": "_server",
        "EvidenceSource": "_service",
        "KeyService": "_service",
        "Throttled": "_service",
        "AuditEntry": "_store",
        "Store": "_store",
        "StoreState": "_store",
        "sqlite_url": "_store",
        "MASTER_KEY_PURPOSE": "_vault",
        "Vault": "_vault",
        "open_master_key": "_vault",
    },
)
