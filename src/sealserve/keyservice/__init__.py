"""The KeyService: attested key release, access control and the audit log.

Model owners give it model keys, users give it request keys, owners grant users access under a
runtime policy, and it releases keys only to a runtime whose attestation evidence satisfies
that policy, HPKE-wrapped to the runtime's fresh public key.  The protocol is in
``docs/keyservice.md``; its bodies and encodings are in :mod:`sealserve.protocol`, which the
clients and the runtime use without this package.

* :class:`KeyService` — the service without HTTP; :func:`create_app` — its HTTP API;
* :class:`Store` — the database (SQLAlchemy: SQLite or PostgreSQL); :class:`Vault` — the
  master key that seals every key at rest;
* :func:`run_keyservice`, :func:`launch_keyservice` — serve it, or launch it measured by the
  TEE platform.
"""

from sealserve.keyservice._app import create_app
from sealserve.keyservice._evidence import EvidenceVerifier
from sealserve.keyservice._launch import LaunchedKeyService, launch_keyservice
from sealserve.keyservice._measured import measured_config
from sealserve.keyservice._server import open_keyservice, run_keyservice
from sealserve.keyservice._service import EvidenceSource, KeyService
from sealserve.keyservice._store import Store
from sealserve.keyservice._vault import Vault, open_master_key

__all__ = [
    "EvidenceSource",
    "EvidenceVerifier",
    "KeyService",
    "LaunchedKeyService",
    "Store",
    "Vault",
    "create_app",
    "launch_keyservice",
    "measured_config",
    "open_keyservice",
    "open_master_key",
    "run_keyservice",
]
