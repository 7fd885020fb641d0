"""A gateway that serves the upload API only, in a process of its own (``sealserve bench
upload`` starts it, so the owner's client and the gateway do not share an interpreter).

``python -m sealserve.bench._upload_server --store URL [--tls-cert F --tls-key F]`` prints
``{"url": ...}`` on one line once it listens and serves until SIGTERM.  Its platform serves
no inference (the benchmark uploads only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sealserve._tls import TlsFiles
from sealserve.errors import PlatformError
from sealserve.gateway import Gateway, GatewayServer, UploadOptions, UploadService
from sealserve.instance import open_store
from sealserve.platform import ModelCatalog, PlatformResult, PlatformStats

__all__ = ["main"]


class _NoInference:
    """A platform that serves no inference (the upload API needs none)."""

    policy = "none"

    async def infer(self, **_kwargs: object) -> PlatformResult:
        raise PlatformError("this gateway serves uploads only")

    def stats(self) -> PlatformStats:
        return PlatformStats(
            policy="none", instances=(), waiting=0, in_flight=0, counters={}, gb_seconds=0.0,
            instance_seconds=0.0, decisions={}, recent=(), config={},
        )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sealserve.bench._upload_server")
    parser.add_argument("--store", required=True)
    parser.add_argument("--staging", type=Path, default=None)
    parser.add_argument("--max-model-bytes", type=int, default=4 << 30)
    parser.add_argument("--tls-cert", type=Path, default=None)
    parser.add_argument("--tls-key", type=Path, default=None)
    args = parser.parse_args(argv)
    store = open_store(args.store)
    staging = args.staging or store.staging_dir() or Path(tempfile.mkdtemp())
    uploads = UploadService(
        store,
        staging_dir=staging / "uploads",
        options=UploadOptions(max_model_bytes=args.max_model_bytes),
    )
    gateway = Gateway(_NoInference(), ModelCatalog(store), uploads=uploads)
    tls = None
    if args.tls_cert is not None:
        tls = TlsFiles(cert=args.tls_cert, key=args.tls_key)
    server = GatewayServer(gateway, host="127.0.0.1", port=0, log_level="ERROR", tls=tls)

    def ready() -> None:
        sys.stdout.write(json.dumps({"url": server.url}) + "\n")
        sys.stdout.flush()

    server.serve(on_ready=ready)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
