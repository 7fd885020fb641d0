"""Liveness and readiness of a service, decided in one place, answered in the Open Inference
Protocol's shape.

Every service (the KeyService, the gateway, an instance host) serves, beside its ``/healthz``::

    GET /v2/health/live    200 {"live": true}     503 {"live": false, "reason": "..."}
    GET /v2/health/ready   200 {"ready": true}    503 {"ready": false, "reason": "..."}

as KServe's and Triton's servers do (the Open Inference Protocol, "Health"): a status code a
load balancer or Kubernetes probe reads, and a body that says why.  A service builds one
:class:`Health` from checks: each check is a function that returns ``None`` when all is well,
or a short reason (no secret: ids and states only) when it is not.  ``live`` failing means
the process should be replaced; ``ready`` failing means it should receive no traffic for now.
The first failing check's reason is the answer's.  Checks are cheap and do no I/O (they read
state the service keeps): a probe must answer even when the service is saturated, and adding
a check (saturation, say) is adding a function here, not a branch in each service.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Final

__all__ = [
    "LIVE_PATH",
    "READY_PATH",
    "Check",
    "Health",
    "HealthAnswer",
]

LIVE_PATH: Final = "/v2/health/live"
READY_PATH: Final = "/v2/health/ready"

#: A check: ``None`` when all is well, else the reason (a short phrase, nothing secret).
Check = Callable[[], str | None]


@dataclasses.dataclass(frozen=True, slots=True)
class HealthAnswer:
    """What a probe is answered: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Health:
    """A service's liveness and readiness checks (see the module docstring).  Readiness
    includes liveness: a service that is not live is not ready either."""

    live_checks: Sequence[Check] = ()
    ready_checks: Sequence[Check] = ()

    def live_failure(self) -> str | None:
        return _first_failure(self.live_checks)

    def ready_failure(self) -> str | None:
        return self.live_failure() or _first_failure(self.ready_checks)

    def live(self) -> HealthAnswer:
        return _answer("live", self.live_failure())

    def ready(self) -> HealthAnswer:
        return _answer("ready", self.ready_failure())

    def answer(self, path: str) -> HealthAnswer | None:
        """The answer for ``path`` if it is one of the two health paths, else ``None``."""
        if path == LIVE_PATH:
            return self.live()
        if path == READY_PATH:
            return self.ready()
        return None

    def with_ready(self, *checks: Check) -> Health:
        """This health with more readiness checks (after the existing ones)."""
        return dataclasses.replace(self, ready_checks=(*self.ready_checks, *checks))


def _first_failure(checks: Sequence[Check]) -> str | None:
    for check in checks:
        reason = check()
        if reason:
            return reason
    return None


def _answer(kind: str, failure: str | None) -> HealthAnswer:
    if failure is None:
        return HealthAnswer(200, json.dumps({kind: True}).encode(), {})
    body = json.dumps({kind: False, "reason": failure}).encode()
    return HealthAnswer(503, body, {"retry-after": "1"})
