"""Inside a measured launch: ask the platform for evidence over the private channel.

The platform starts each launched process with one end of a socket pair whose descriptor
number is in ``SEALSERVE_TEE_FD``; only requests on that channel are answered, and the answer
carries that process's measurement.  A process that was not launched by the platform has no
such channel and cannot obtain evidence.

Inside a Gramine SGX enclave (``SEALSERVE_TEE_BACKEND=gramine``, fixed by the measured
manifest) the process is the enclave: it asks Gramine's ``/dev/attestation`` itself
(:mod:`sealserve.attest._gramine`; ``SEALSERVE_TEE_GRAMINE_DIR`` and
``SEALSERVE_TEE_DCAP_COLLATERAL`` name another directory and the collateral file).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Final

from sealserve.attest._evidence import REPORT_DATA_BYTES, Evidence
from sealserve.attest._wire import b64, recv_message, send_message, unb64
from sealserve.errors import TeeError

if TYPE_CHECKING:
    from sealserve.attest._gramine import GramineAttestation

__all__ = [
    "PASSED_FDS_ENV",
    "TEE_CONFIG_ENV",
    "TEE_DEBUG_ENV",
    "TEE_ENTRY_ENV",
    "TEE_FD_ENV",
    "in_measured_launch",
    "launch_config",
    "local_evidence",
    "local_sealing_key",
    "passed_fds",
]

TEE_FD_ENV: Final = "SEALSERVE_TEE_FD"
TEE_BACKEND_ENV: Final = "SEALSERVE_TEE_BACKEND"
TEE_GRAMINE_DIR_ENV: Final = "SEALSERVE_TEE_GRAMINE_DIR"
TEE_COLLATERAL_ENV: Final = "SEALSERVE_TEE_DCAP_COLLATERAL"
TEE_CONFIG_ENV: Final = "SEALSERVE_TEE_CONFIG"
TEE_ENTRY_ENV: Final = "SEALSERVE_TEE_ENTRY"
TEE_DEBUG_ENV: Final = "SEALSERVE_TEE_DEBUG"
PASSED_FDS_ENV: Final = "SEALSERVE_PASSED_FDS"

_lock = threading.Lock()
_channel: socket.socket | None = None


def in_measured_launch() -> bool:
    """Whether this process was started by a TEE platform (has an attestation channel), or
    runs in a Gramine enclave."""
    return TEE_FD_ENV in os.environ or _gramine() is not None


def _gramine() -> GramineAttestation | None:
    if os.environ.get(TEE_BACKEND_ENV) != "gramine":
        return None
    from sealserve.attest._gramine import DEFAULT_ATTESTATION_DIR, GramineAttestation

    collateral = None
    path = os.environ.get(TEE_COLLATERAL_ENV)
    if path:
        try:
            with open(path, "rb") as fh:
                collateral = fh.read()
        except OSError as exc:
            raise TeeError(f"cannot read the DCAP collateral '{path}': {exc}") from exc
    return GramineAttestation(
        os.environ.get(TEE_GRAMINE_DIR_ENV) or DEFAULT_ATTESTATION_DIR, collateral=collateral
    )


def local_evidence(report_data: bytes, *, timeout: float = 10.0) -> Evidence:
    """Evidence for this process's measurement, carrying ``report_data`` (64 bytes).

    Only works inside a measured launch; elsewhere raises :class:`~sealserve.errors.TeeError`.
    Thread-safe; requests are serialized on the one channel.
    """
    data = bytes(report_data)
    if len(data) != REPORT_DATA_BYTES:
        raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(data)}")
    gramine = _gramine()
    if gramine is not None:
        return gramine.evidence(data)
    message = _ask({"op": "evidence", "report_data": b64(data)}, timeout)
    if not message.get("ok"):
        raise TeeError(f"the platform refused evidence: {message.get('error', 'unknown error')}")
    try:
        return Evidence.from_bytes(unb64(message.get("evidence")))
    except ValueError as exc:
        raise TeeError("the platform answered with malformed evidence") from exc


def local_sealing_key(purpose: str, *, timeout: float = 10.0) -> bytes:
    """This process's 32-byte sealing key for ``purpose`` (see :mod:`sealserve.attest._sealing`).

    The platform derives it from its sealing root and this process's measurement, and hands it
    over only on this process's own attestation channel: the same code launched on the same
    platform gets the same key after any restart; other code, a debug launch, or another
    platform never does.  Outside a measured launch raises :class:`~sealserve.errors.TeeError`.
    """
    from sealserve.attest._sealing import SEALING_KEY_BYTES, check_purpose, derive_sealing_key

    gramine = _gramine()
    if gramine is not None:
        # EGETKEY's key is bound to MRENCLAVE already; the measurement named here is the
        # launch config's (the manifest fixes it), so each purpose still gets its own key.
        return derive_sealing_key(
            gramine.sealing_root(),
            measurement=hashlib.sha256(os.environ.get(TEE_CONFIG_ENV, "").encode()).hexdigest(),
            purpose=check_purpose(purpose),
            debug=False,
        )
    message = _ask({"op": "sealing_key", "purpose": check_purpose(purpose)}, timeout)
    if not message.get("ok"):
        raise TeeError(f"the platform refused a sealing key: {message.get('error', 'unknown')}")
    try:
        key = unb64(message.get("key"))
    except ValueError:
        key = b""
    if len(key) != SEALING_KEY_BYTES:
        raise TeeError("the platform answered with a malformed sealing key")
    return key


def _ask(request: dict[str, Any], timeout: float) -> dict[str, Any]:
    with _lock:
        channel = _open_channel()
        channel.settimeout(timeout)
        try:
            send_message(channel, request)
            reply = recv_message(channel)
        except (OSError, ValueError) as exc:
            raise TeeError(f"the attestation channel failed: {exc}") from exc
    if reply is None:
        raise TeeError("the platform closed the attestation channel")
    return reply[0]


def launch_config() -> dict[str, str]:
    """The launch config the platform measured for this process (empty outside a launch)."""
    text = os.environ.get(TEE_CONFIG_ENV, "")
    if not text:
        return {}
    config = json.loads(text)
    if not isinstance(config, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in config.items()
    ):
        raise TeeError(f"{TEE_CONFIG_ENV} does not hold a JSON object of strings")
    return config


def passed_fds() -> tuple[int, ...]:
    """The descriptors the launcher handed to this process, in the order it gave them."""
    text = os.environ.get(PASSED_FDS_ENV, "")
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise TeeError(f"{PASSED_FDS_ENV} has value {text!r}; not a list of integers") from None


def _open_channel() -> socket.socket:
    global _channel
    if _channel is not None:
        return _channel
    text = os.environ.get(TEE_FD_ENV)
    if text is None:
        raise TeeError(
            f"not inside a measured launch ({TEE_FD_ENV} is not set): only a process the TEE "
            "platform launched can obtain evidence"
        )
    try:
        _channel = socket.socket(fileno=int(text))
    except (ValueError, OSError) as exc:
        raise TeeError(f"{TEE_FD_ENV}={text!r} is not an open socket: {exc}") from exc
    return _channel
