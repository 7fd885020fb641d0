"""The headers of the host's binary endpoint, shared by the host and its client.

``POST /v1/infer`` carries the sealed input as its body (``application/octet-stream``, with a
``Content-Length``) and says what it is in headers; the answer's body is the sealed output and
its ``Server-Timing`` header the stage timings (``name;dur=<ms>``, the stage names of
:mod:`sealserve.runtime.timings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "DEADLINE_HEADER",
    "MODEL_HEADER",
    "REQUEST_ID_HEADER",
    "SERVER_TIMING_HEADER",
    "TIMEOUT_HEADER",
    "USER_HEADER",
    "format_server_timing",
    "parse_server_timing",
]

#: The model id, ``<owner_id>/<name>``.
MODEL_HEADER: Final = "x-sealserve-model"
#: The user's principal id (64 hex digits).
USER_HEADER: Final = "x-sealserve-user"
#: The client's request id, bound into both envelopes.
REQUEST_ID_HEADER: Final = "x-sealserve-request-id"
#: Absolute deadline, Unix time in milliseconds (as OpenWhisk's ``deadline``).
DEADLINE_HEADER: Final = "x-sealserve-deadline"
#: Relative deadline in milliseconds (used when there is no absolute one).
TIMEOUT_HEADER: Final = "x-sealserve-timeout-ms"
SERVER_TIMING_HEADER: Final = "server-timing"


def format_server_timing(timings_ms: Mapping[str, float]) -> str:
    """``stage;dur=ms, ...`` (RFC-less but what browsers and proxies read: W3C Server Timing)."""
    return ", ".join(f"{name};dur={ms:.3f}" for name, ms in timings_ms.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """The stage timings of a ``Server-Timing`` header (unknown parameters are ignored)."""
    out: dict[str, float] = {}
    for part in value.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        if not name:
            continue
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip() == "dur":
                try:
                    out[name] = float(raw.strip().strip('"'))
                except ValueError:
                    continue
    return out
