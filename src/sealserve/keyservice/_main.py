"""The ``keyservice`` entry: the KeyService process, as launched (and measured) by the platform.

Run as ``__main__`` from the platform's code snapshot, never directly: its evidence comes from
``local_evidence``, which works only inside a measured launch.  Arguments (unmeasured: what the
host decides) say where to listen and where the data is; the settings that weaken security
when changed (challenge, release and replay windows) arrive in the *measured* launch config,
so a client's pinned measurement covers them (an empty config means the defaults).  So does
which hardware evidence it accepts beyond its own platform's: whether SEV-SNP and Azure CVMs
(and under which ARK pins: AMD's unless a test says otherwise), and the roots a TPM
attestation key must chain to; a host cannot slip in a root of its own.  The AMD certificates
and CRLs the operator cached (``--snp-cache``) are unmeasured: each must chain to a pinned ARK.

With ``--inherit-socket`` it serves on the listening socket the launcher handed over (the
first passed descriptor) instead of binding one: that is how several KeyService processes,
each launched and attested on its own, share one port.

Its master key is never an argument, a file or a variable: it is generated here and kept
sealed under this process's TEE sealing key (:mod:`sealserve.keyservice._vault`), or, with
``--join URL`` (unmeasured: which peer to ask is the host's choice, whom to believe is not),
obtained from a running KeyService of the same measurement that attests to it and verifies
this one's evidence (:mod:`sealserve.keyservice._replicas`).

It prints one JSON "ready" line on stdout when it accepts connections, logs JSON lines on
stderr, and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sealserve._log import configure_logging, get_logger
from sealserve._tls import TlsFiles
from sealserve.attest import (
    FORMAT_SIMULATED,
    REPORT_DATA_BYTES,
    Evidence,
    TrustAnchors,
    launch_config,
    local_evidence,
    local_sealing_key,
    passed_fds,
)
from sealserve.config import KeyServiceSettings
from sealserve.errors import SealserveError, TeeError
from sealserve.keyservice._measured import (
    dcap_root,
    hardware_anchors,
    replica_reference_values,
    settings_from,
)
from sealserve.keyservice._replicas import join_keyservice, replica_policy
from sealserve.keyservice._vault import MASTER_KEY_PURPOSE

__all__ = ["main"]

_EX_CONFIG = 78
_SWITCH_INTERVAL_S = 0.0005
_log = get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    defaults = KeyServiceSettings()
    p = argparse.ArgumentParser(prog="sealserve.keyservice._main")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--db", default="")
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=defaults.port)
    p.add_argument("--platform-key", default="", help="hex public key file of the platform")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    p.add_argument(
        "--inherit-socket",
        action="store_true",
        help="serve on the listening socket passed by the launcher (its first passed fd)",
    )
    p.add_argument("--rate-limit-per-s", type=float, default=defaults.rate_limit_per_s)
    p.add_argument("--rate-limit-burst", type=int, default=defaults.rate_limit_burst)
    p.add_argument(
        "--limit", action="append", metavar="NAME=VALUE", help="a request budget (_limits)"
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--snp-cache", type=Path, default=None, help="AMD certificate cache")
    p.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS: certificate chain")
    p.add_argument("--tls-key", type=Path, default=None, help="serve HTTPS: its private key")
    p.add_argument(
        "--join",
        default=None,
        metavar="URL",
        help="a running KeyService of this measurement to obtain the master key from "
        "(attested both ways) when it does not unseal here",
    )
    p.add_argument("--join-ca", default=None, help="CA bundle of an HTTPS --join URL")
    return p


def _trust(args: argparse.Namespace, config: Mapping[str, str], own: Evidence) -> TrustAnchors:
    """The platforms whose evidence this KeyService accepts: of the keys its host names, only
    the one of the platform that launched it (the host is not trusted to choose); and the
    hardware its measured config names.  ``own`` is this process's own evidence."""
    snp, tpm = hardware_anchors(config, args.snp_cache)
    hardware = TrustAnchors(snp=snp, tpm=tpm, dcap_root_ca_der=dcap_root(config))
    if own.format != FORMAT_SIMULATED:
        # Launched by a hardware launcher: no simulated platform to trust at all.
        return hardware.of_own_platform(own)
    if args.platform_key:
        keys = frozenset({bytes.fromhex(Path(args.platform_key).read_text().strip())})
    else:
        keys = TrustAnchors.from_data_dir(args.data_dir).simulated_platform_keys
    given = dataclasses.replace(hardware, simulated_platform_keys=keys)
    return given.of_own_platform(own)


def _inherited_socket() -> socket.socket:
    fds = passed_fds()
    if not fds:
        raise SealserveError("--inherit-socket given, but the launcher passed no descriptor")
    sock = socket.socket(fileno=fds[0])
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SealserveError("--inherit-socket: the passed descriptor is not a stream socket")
    return sock


def _sealing_key(*, joining: bool) -> bytes | None:
    """This process's sealing key for the master key; None on a node that has none (TDX) when
    it joins a peer (it then keeps the master key in memory only)."""
    try:
        return local_sealing_key(MASTER_KEY_PURPOSE)
    except TeeError as exc:
        if not joining:
            raise TeeError(
                f"{exc}. A KeyService on a node without a sealing key obtains the master key "
                "from a running one: --join URL (docs/keyservice.md)"
            ) from exc
        _log.event("keyservice.no_sealing_key", message=str(exc))
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    # Database work runs in worker threads; with the default 5 ms switch interval a worker
    # that needs the GIL while the event loop computes waits that long on every hop.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    from sealserve.keyservice._server import run_keyservice

    try:
        config = launch_config()
        settings = settings_from(args, config)
        own = local_evidence(bytes(REPORT_DATA_BYTES))
        trust = _trust(args, config, own)
        replicas = replica_policy(own, replica_reference_values(config))
        sock = _inherited_socket() if args.inherit_socket else None
        tls = None
        if args.tls_cert is not None or args.tls_key is not None:
            tls = TlsFiles(cert=args.tls_cert, key=args.tls_key)

        def evidence(report_data: bytes) -> bytes:
            return local_evidence(report_data).to_bytes()

        join = None
        if args.join:
            url = str(args.join)

            def join() -> bytes:
                return join_keyservice(
                    url,
                    policy=replicas,
                    trust=trust,
                    evidence_source=evidence,
                    ca_bundle=args.join_ca,
                )

        run_keyservice(
            settings=settings,
            data_dir=args.data_dir,
            evidence_source=evidence,
            trust=trust,
            sealing_key=_sealing_key(joining=join is not None),
            ready=sys.stdout,
            log_level=args.log_level,
            sock=sock,
            tls=tls,
            join=join,
            replica_policy=replicas,
        )
    except (SealserveError, ValueError, OSError) as exc:
        _log.event("keyservice.failed", error=type(exc).__name__, message=str(exc))
        sys.stderr.write(f"keyservice: {exc}\n")
        return _EX_CONFIG
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
