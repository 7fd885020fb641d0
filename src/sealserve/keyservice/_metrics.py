"""Prometheus series of one KeyService (its own registry, so several can live in a process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sealserve.keyservice._limits import Budget

__all__ = ["DENIAL_REASONS", "PUBLIC_DENIAL_REASONS", "Metrics", "public_reason"]

#: Every reason a release or a signed request can be refused for (labels of the denials).
DENIAL_REASONS = (
    "malformed",  # the body does not parse or names impossible ids
    "nonce",  # unknown, used or expired challenge nonce
    "evidence",  # evidence does not verify (signature, report_data, platform)
    "not_granted",  # no grant for a pair
    "no_request_key",  # the user registered no request key for the model
    "no_model_key",  # the model has no key
    "owner_policy",  # evidence outside the owner's runtime policy
    "user_policy",  # evidence outside the user's runtime policy
    "signature",  # a signed request that does not verify or is replayed
    "unknown_principal",  # a signed request from an unregistered key
    "wrong_principal",  # a signed request about another principal's model or keys
    "wrong_role",  # e.g. a user putting a model key
    "store",  # a record that does not unseal under the master key
    "replica_policy",  # a joining replica that is not a KeyService of this measurement
    "replicas_not_admitted",  # a KeyService that pins no replica platforms was asked to join
)

#: What ``/metrics`` (which answers anyone) counts a denial under.  It must not tell a prober
#: more than the fixed 403 did: whether the principal it named is registered
#: (``unknown_principal`` vs ``signature``), or which records of a pair exist (``not_granted``
#: vs ``no_request_key`` vs a policy), or that a record exists but does not unseal
#: (``store``).  The exact reason goes to the log at DEBUG (``request.denied``).
_PUBLIC: dict[str, str] = {
    "malformed": "malformed",
    "nonce": "nonce",
    "evidence": "evidence",
    "not_granted": "access",
    "no_request_key": "access",
    "no_model_key": "access",
    "owner_policy": "access",
    "user_policy": "access",
    "store": "access",
    "signature": "signature",
    "unknown_principal": "signature",
    "wrong_principal": "wrong_principal",
    "wrong_role": "wrong_role",
    "replica_policy": "replica",
    "replicas_not_admitted": "replica",
}
#: The labels of ``sealserve_keyservice_denials_total``.
PUBLIC_DENIAL_REASONS = tuple(dict.fromkeys(_PUBLIC.values()))


def public_reason(reason: str) -> str:
    """The label ``/metrics`` counts a denial for ``reason`` under."""
    try:
        return _PUBLIC[reason]
    except KeyError:
        raise ValueError(f"reason must be one of {DENIAL_REASONS}, got {reason!r}") from None


_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The series: releases, keys released, denials by reason, challenges, rate limiting and
    request latency by route.  Each process of a KeyService keeps (and serves) its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.releases = Counter(
            "sealserve_keyservice_releases",
            "Key releases granted.",
            registry=self.registry,
        )
        self.released_pairs = Counter(
            "sealserve_keyservice_released_pairs",
            "(user, model) pairs whose keys were released.",
            registry=self.registry,
        )
        self.denials = Counter(
            "sealserve_keyservice_denials",
            "Refused releases and signed requests, by coarse reason (the log has the exact one).",
            ["reason"],
            registry=self.registry,
        )
        for label in PUBLIC_DENIAL_REASONS:
            self.denials.labels(reason=label)
        self.revocation_polls = Counter(
            "sealserve_keyservice_revocation_polls",
            "Revocation polls answered.",
            registry=self.registry,
        )
        self.challenges = Counter(
            "sealserve_keyservice_challenges",
            "Challenges issued.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "sealserve_keyservice_rate_limited",
            "Requests answered 429, by budget.",
            ["limit"],
            registry=self.registry,
        )
        for budget in Budget:  # every budget's series exists from the start (dashboards)
            self.rate_limited.labels(limit=budget.value)
        self.latency = Histogram(
            "sealserve_keyservice_request_seconds",
            "Time to answer a request, by route and status class.",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._latency_children: dict[tuple[str, int], Any] = {}

    def deny(self, reason: str) -> None:
        self.denials.labels(reason=public_reason(reason)).inc()

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Record one answered request's latency (the labelled series is looked up once)."""
        key = (route, status // 100)
        child = self._latency_children.get(key)
        if child is None:
            child = self.latency.labels(route=route, status=f"{status // 100}xx")
            self._latency_children[key] = child
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
