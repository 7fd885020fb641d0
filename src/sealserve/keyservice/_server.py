"""Run a KeyService: open the store and the vault, build the app, serve it with uvicorn.

:func:`run_keyservice` is what the attested ``keyservice`` entry (``sealserve.keyservice._main``)
calls inside the launched process.  It binds the socket first (so port 0 works), or serves on
one it was given (several processes sharing a port), prints one JSON "ready" line to ``ready``
once it accepts connections, and stops cleanly on SIGINT or SIGTERM (uvicorn's handlers:
in-flight requests finish, then the store closes).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve._serving import ReadyServer, base_url, bind_listener, server_config
from sealserve._tls import TlsFiles
from sealserve.attest import Policy, TrustAnchors
from sealserve.config import KeyServiceSettings
from sealserve.keyservice._app import create_app
from sealserve.keyservice._evidence import EvidenceVerifier
from sealserve.keyservice._service import EvidenceSource, KeyService
from sealserve.keyservice._store import Store, sqlite_url
from sealserve.keyservice._vault import Vault, open_master_key

__all__ = [
    "database_url",
    "keyservice_dir",
    "open_keyservice",
    "run_keyservice",
]

_log = get_logger(__name__)


def keyservice_dir(data_dir: Path) -> Path:
    """``<data_dir>/keyservice``: the default SQLite database."""
    return Path(data_dir) / "keyservice"


def database_url(settings: KeyServiceSettings, data_dir: Path) -> str:
    """The configured database URL, or the SQLite file in the data directory."""
    if settings.db_url:
        return settings.db_url
    folder = keyservice_dir(data_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return sqlite_url(str(folder / "keyservice.db"))


@contextlib.contextmanager
def open_keyservice(
    *,
    settings: KeyServiceSettings,
    data_dir: Path,
    evidence_source: EvidenceSource,
    trust: TrustAnchors,
    sealing_key: bytes | None,
    clock: Clock = SYSTEM_CLOCK,
    join: Callable[[], bytes] | None = None,
    replica_policy: Policy | None = None,
) -> Iterator[KeyService]:
    """A ready :class:`KeyService` over its store, its master key unsealed (or created and
    sealed) with ``sealing_key`` (the TEE's, :func:`~sealserve.attest.local_sealing_key`; None
    on a node without one), or obtained with ``join`` from a running peer
    (:func:`~sealserve.keyservice._replicas.join_keyservice`); replicas that satisfy
    ``replica_policy`` may join it in turn.  Closes the store on exit."""
    with Store(database_url(settings, data_dir)) as store:
        vault = Vault(open_master_key(store, sealing_key, now=clock.time(), join=join))
        yield KeyService(
            store=store,
            vault=vault,
            evidence_source=evidence_source,
            verifier=EvidenceVerifier(trust=trust, clock=clock),
            settings=settings,
            clock=clock,
            replica_policy=replica_policy,
        )


def run_keyservice(
    *,
    settings: KeyServiceSettings,
    data_dir: Path,
    evidence_source: EvidenceSource,
    trust: TrustAnchors,
    sealing_key: bytes | None,
    ready: TextIO | None = None,
    log_level: str = "INFO",
    sock: socket.socket | None = None,
    tls: TlsFiles | None = None,
    join: Callable[[], bytes] | None = None,
    replica_policy: Policy | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, on ``sock`` if given (a listening socket) or on one bound
    to ``settings.host``/``port``; HTTPS with ``tls``.  ``ready`` gets one JSON line once the
    port accepts."""
    with open_keyservice(
        settings=settings,
        data_dir=data_dir,
        evidence_source=evidence_source,
        trust=trust,
        sealing_key=sealing_key,
        join=join,
        replica_policy=replica_policy,
    ) as service:
        app = create_app(service)
        if sock is None:
            sock = bind_listener(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        server = ReadyServer(
            server_config(app, log_level=log_level, lifespan="off", graceful_s=10, tls=tls)
        )

        def announce() -> None:
            line = {
                "event": "keyservice.ready",
                "host": host,
                "port": port,
                "url": base_url(host, port, tls=tls),
                "keyservice_id": service.keyservice_id,
                "database": service.store.safe_url,
                "pid": os.getpid(),
            }
            _log.event(
                "keyservice.listening", host=host, port=port, keyservice_id=service.keyservice_id
            )
            if ready is not None:
                ready.write(json.dumps(line) + "\n")
                ready.flush()
                if ready is sys.stdout:  # the launcher may stop reading: nothing more goes there
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    os.close(devnull)

        server.on_ready = announce
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
        _log.event("keyservice.stopped")
