"""The headers of sealserve's HTTP inference endpoints, shared by servers and clients.

The instance host's binary endpoint (``POST /v1/infer``) carries the sealed input as its body
(``application/octet-stream``, with a ``Content-Length``) and says what it is in headers: the
model, the user and the request id (the ones bound in both envelopes) and maybe a deadline.
The gateway's (``POST /v1/models/<owner>/<name>:infer``) takes the same headers but the model,
which is in its path.  An answer's body is the sealed output; its ``Server-Timing`` header
gives the stage timings (``name;dur=<ms>``, the stage names of :mod:`sealserve.ecall.timings`)
and the gateway's answer says how the request was routed::

    x-sealserve-decision: run;instance=0;load=1;cold-start=0;evict=0;waits=0
    x-sealserve-decision-reason: load on i0: expected 281 ms; next best ...
    x-sealserve-instance: 0
    x-sealserve-policy: sealserve
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

__all__ = [
    "DEADLINE_HEADER",
    "DECISION_HEADER",
    "INSTANCE_HEADER",
    "MODEL_HEADER",
    "POLICY_HEADER",
    "REASON_HEADER",
    "REQUEST_ID_HEADER",
    "RouteInfo",
    "SERVER_TIMING_HEADER",
    "TIMEOUT_HEADER",
    "USER_HEADER",
    "ascii_header",
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


#: How the request was routed: ``<kind>;instance=<id>;load=<0|1>;cold-start=<0|1>;...``.
DECISION_HEADER: Final = "x-sealserve-decision"
#: The policy's one-line reason for it.
REASON_HEADER: Final = "x-sealserve-decision-reason"
#: The instance that served it.
INSTANCE_HEADER: Final = "x-sealserve-instance"
#: The routing policy in force.
POLICY_HEADER: Final = "x-sealserve-policy"

_MAX_HEADER = 1024


def ascii_header(text: str, *, limit: int = _MAX_HEADER) -> str:
    """``text`` as a header value: printable ASCII (others become ``?``), at most ``limit``."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RouteInfo:
    """How the gateway's router placed a request (from the answer's headers)."""

    kind: str
    instance_id: int | None
    load: bool
    cold_start: bool
    evicted: int
    waits: int
    reason: str
    policy: str

    def to_header(self) -> str:
        fields = [self.kind]
        if self.instance_id is not None:
            fields.append(f"instance={self.instance_id}")
        fields += [
            f"load={int(self.load)}",
            f"cold-start={int(self.cold_start)}",
            f"evict={self.evicted}",
            f"waits={self.waits}",
        ]
        return ";".join(fields)

    @classmethod
    def from_headers(
        cls, decision: str | None, reason: str | None, policy: str | None
    ) -> RouteInfo | None:
        """Parse the decision headers; ``None`` when there are none or they do not parse."""
        if not decision:
            return None
        kind, *params = (p.strip() for p in decision.split(";"))
        values: dict[str, str] = {}
        for param in params:
            key, sep, value = param.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        try:
            instance = int(values["instance"]) if "instance" in values else None
            return cls(
                kind=kind,
                instance_id=instance,
                load=values.get("load") == "1",
                cold_start=values.get("cold-start") == "1",
                evicted=int(values.get("evict", "0")),
                waits=int(values.get("waits", "0")),
                reason=reason or "",
                policy=policy or "",
            )
        except ValueError:
            return None

    def describe(self) -> str:
        """One line, as the platform's decision log says it."""
        where = {"run": f"run on i{self.instance_id}", "start": f"start i{self.instance_id}"}
        extra = [
            flag
            for flag, on in (("load", self.load), (f"evict {self.evicted}", self.evicted))
            if on
        ]
        if self.waits:
            extra.append(f"after {self.waits} wait{'s' if self.waits > 1 else ''}")
        tail = f" [{'; '.join(extra)}]" if extra else ""
        return f"{where.get(self.kind, self.kind)}{tail}: {self.reason}"


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
