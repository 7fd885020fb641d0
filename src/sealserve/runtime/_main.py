"""The ``runtime`` entry: the SeMIRT process, as launched (and measured) by the TEE platform.

Run as ``__main__`` from the platform's code snapshot by the instance host, never directly:
keys are released only against evidence from ``local_evidence``, which exists only inside a
measured launch.  The host hands over one end of a Unix socket pair (the first passed
descriptor); the runtime opens the ipc connection the host offers on it and serves ecalls
until the host closes it (or SIGTERM).  Where the launcher passes no descriptors (a Gramine
enclave inherits none) the host listens on a named Unix socket instead and the runtime
connects to it: ``--ipc-socket PATH`` (and ``--data-socket PATH`` for the data link), or the
variables ``SEALSERVE_IPC_SOCKET`` and ``SEALSERVE_DATA_SOCKET``.  Either way the host is as
untrusted as before: the path is its choice, and so is everything that arrives on it.

* measured launch config: which KeyService to trust (:func:`runtime_launch_config`);
* arguments (unmeasured, the host decides): memory budget, threads, workers, baseline mode;
* stderr: JSON log lines (ids, sizes, timings; never a key or a plaintext); stdout: unused.

A second passed descriptor, when there is one, is the **data link**: a socket on which a
platform that sends requests straight to the runtime (the local platform's gateway) offers
an ipc connection of its own, once it has received the other end from the host.  It carries
ecalls only (the ocalls go to the host), and the runtime treats it as it treats the host:
untrusted.  The runtime waits for that offer in the background and serves the host
meanwhile; a link that never comes costs nothing.

Exit status: 0 after an orderly close, 78 for a bad launch (config, arguments, no socket),
70 when the connection failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Final

from sealserve._log import configure_logging, get_logger
from sealserve.errors import SealserveError

__all__ = ["DATA_SOCKET_ENV", "IPC_SOCKET_ENV", "main", "parse_args", "prepare_template"]

#: Where a launch that passes no descriptors names the host's sockets (Gramine: the manifest
#: passes these variables through; elsewhere ``--ipc-socket``/``--data-socket``).
IPC_SOCKET_ENV: Final = "SEALSERVE_IPC_SOCKET"
DATA_SOCKET_ENV: Final = "SEALSERVE_DATA_SOCKET"

_EX_SOFTWARE = 70
_SWITCH_INTERVAL_S = 0.0005
_EX_CONFIG = 78
#: How long the runtime waits for its data link to be offered (it may never be).
_DATA_LINK_WAIT_S = 86400.0
_log = get_logger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sealserve.runtime._main")
    p.add_argument("--memory-budget-mb", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--memory-factor", type=float, default=4.0)
    p.add_argument(
        "--inference-memory-mb",
        type=int,
        default=None,
        help="what inferences may allocate at once (default: --memory-budget-mb)",
    )
    p.add_argument("--max-input-age-s", type=float, default=3600.0)
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--connect-timeout-s", type=float, default=30.0)
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--ipc-socket",
        default=os.environ.get(IPC_SOCKET_ENV) or None,
        help="connect to the host's ipc offer on this named Unix socket instead of an "
        f"inherited descriptor (default: ${IPC_SOCKET_ENV})",
    )
    p.add_argument(
        "--data-socket",
        default=os.environ.get(DATA_SOCKET_ENV) or None,
        help=f"the data link's named Unix socket (default: ${DATA_SOCKET_ENV})",
    )
    return p.parse_args(argv)


def _host_sockets(args: argparse.Namespace) -> tuple[socket.socket, socket.socket | None]:
    """The host link's socket and the data link's (or None): inherited descriptors, or, when
    the launcher cannot pass descriptors (a Gramine enclave inherits none), connections to the
    named Unix sockets the host listens on, given at launch."""
    from sealserve.attest import passed_fds

    if args.ipc_socket:
        host = _connect(args.ipc_socket)
        data = _connect(args.data_socket) if args.data_socket else None
        return host, data
    fds = passed_fds()
    if not fds:
        raise SealserveError(
            "no ipc socket was passed to the runtime, and no named one given (--ipc-socket)"
        )
    return socket.socket(fileno=fds[0]), (socket.socket(fileno=fds[1]) if len(fds) > 1 else None)


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise SealserveError(f"cannot connect to the host's socket '{path}': {exc}") from exc
    return sock


def prepare_template() -> None:
    """What a measured template of this entry imports once, so that each runtime forked from
    it starts without paying for it (see :mod:`sealserve.attest._templates`).  Nothing here
    makes a key, reads the launch config or starts a thread: that is each launch's own."""
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    import sealserve.attest
    import sealserve.crypto
    import sealserve.ipc
    import sealserve.runtime._core
    import sealserve.runtime._keys
    import sealserve.runtime._server  # noqa: F401


def _preload() -> None:
    """Import onnxruntime while the ipc handshake runs (it takes a third of a second)."""
    import onnxruntime  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    configure_logging(args.log_level)
    from sealserve.runtime._hardening import harden_process

    try:
        harden_process()  # before any key, model or input is in memory
    except OSError as exc:
        _log.event("runtime.bad_launch", error=type(exc).__name__, message=str(exc))
        return _EX_CONFIG
    # The receiver thread hands calls to workers: a short switch interval hands over the GIL
    # in a fraction of a millisecond instead of up to 5 ms.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    from sealserve.runtime._malloc import keep_buffers_in_heap

    keep_buffers_in_heap()
    preload = threading.Thread(target=_preload, name="runtime-preload", daemon=True)
    preload.start()

    from sealserve.attest import launch_config, local_evidence
    from sealserve.crypto import HpkeKeyPair
    from sealserve.ecall import Endpoint, Message, pin_from_launch_config
    from sealserve.ipc import Connection, QoS
    from sealserve.runtime._core import RuntimeOptions, SealedRuntime
    from sealserve.runtime._keys import KeyBroker
    from sealserve.runtime._server import HostModelSource, HostRelay, RuntimeServer

    try:
        options = RuntimeOptions(
            memory_budget_bytes=args.memory_budget_mb << 20,
            threads=args.threads,
            workers=args.workers,
            memory_factor=args.memory_factor,
            max_input_age_s=args.max_input_age_s,
            baseline=args.baseline,
            inference_memory_bytes=None
            if args.inference_memory_mb is None
            else args.inference_memory_mb << 20,
        )
        pin = pin_from_launch_config(launch_config())
        sock, data_sock = _host_sockets(args)
    except (SealserveError, ValueError, OSError) as exc:
        _log.event("runtime.bad_launch", error=type(exc).__name__, message=str(exc))
        sys.stderr.write(f"runtime: {exc}\n")
        return _EX_CONFIG

    from sealserve.runtime._session import configure_inference_memory

    # Before any session exists: every session's runs allocate from this capped arena.
    configure_inference_memory(options.inference_memory_bytes or options.memory_budget_bytes)
    key_pair = HpkeKeyPair.generate()  # fresh at every start; bound into each evidence
    try:
        # Calls here take milliseconds (an inference): a waiter that spins would only take a
        # core from onnxruntime, so both ends block at once (the efficiency QoS).
        connection = Connection.open(sock, timeout=args.connect_timeout_s, qos=QoS.EFFICIENCY)
    except (SealserveError, OSError) as exc:
        _log.event("runtime.connect_failed", error=type(exc).__name__, message=str(exc))
        return _EX_SOFTWARE
    server: RuntimeServer | None = None

    def handle(message: Message) -> None:
        assert server is not None
        server.handle(message)

    endpoint = Endpoint(connection, name="runtime", handler=handle, broken_error=_gone)
    data_links: list[Endpoint] = []
    relay = HostRelay(endpoint)
    keys = KeyBroker(
        relay=relay,
        pin=pin,
        evidence=lambda report_data: local_evidence(report_data),
        cache=not options.baseline,
        key_pair=key_pair,
    )
    runtime = SealedRuntime(options=options, keys=keys, source=HostModelSource(endpoint))
    server = RuntimeServer(runtime, workers=options.workers)
    server.attach(endpoint)
    preload.join()

    def stop(signum: int, frame: FrameType | None) -> None:
        endpoint.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    endpoint.open()
    if data_sock is not None:
        threading.Thread(
            target=_accept_data_link,
            args=(data_sock, server, data_links),
            name="runtime-data-link",
            daemon=True,
        ).start()
    _log.event(
        "runtime.ready",
        startup_ms=round((time.perf_counter() - started) * 1000, 3),
        baseline=options.baseline,
        budget_bytes=options.memory_budget_bytes,
        threads=options.threads,
        workers=options.workers,
    )
    while not endpoint.wait_closed(1.0):
        pass
    endpoint.close()
    for link in list(data_links):
        link.close()
    server.close()
    _log.event("runtime.stopped")
    return 0


def _accept_data_link(sock: socket.socket, server: Any, links: list[Any]) -> None:
    """Open the data link offered on ``sock`` (whenever the platform offers it) and serve its
    ecalls with ``server``; returns at once if the other end is closed unused."""
    from sealserve.ecall import Endpoint, Message
    from sealserve.ipc import Connection, QoS

    try:
        connection = Connection.open(sock, timeout=_DATA_LINK_WAIT_S, qos=QoS.EFFICIENCY)
    except (SealserveError, OSError) as exc:
        sock.close()
        _log.event("runtime.data_link_unused", error=type(exc).__name__)
        return
    holder: list[Endpoint] = []

    def handle(message: Message) -> None:
        server.handle(message, holder[0])

    link = Endpoint(connection, name="runtime-data", handler=handle, broken_error=_gone)
    holder.append(link)
    links.append(link)
    link.open()
    _log.event("runtime.data_link_open")


def _gone(message: str) -> Exception:
    from sealserve.errors import RuntimeUnavailable

    return RuntimeUnavailable(message)


if __name__ == "__main__":
    raise SystemExit(main())
