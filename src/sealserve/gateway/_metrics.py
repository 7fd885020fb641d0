"""The gateway's Prometheus series (docs/operating.md, "The gateway")."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics"]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BYTES = tuple(float(1 << n) for n in range(10, 28, 2))


class GatewayMetrics:
    """Requests by answer code, their latency, what is in flight, and input sizes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "sealserve_gateway_requests",
            "Inference requests by answer code (ok, or the error code).",
            ["code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "sealserve_gateway_request_seconds",
            "Inference requests from arrival to answer, by answer code.",
            ["code"],
            registry=registry,
            buckets=_SECONDS,
        )
        self.in_flight = Gauge(
            "sealserve_gateway_in_flight",
            "Inference requests the gateway holds (reading, waiting, running).",
            registry=registry,
        )
        self.body_bytes = Histogram(
            "sealserve_gateway_request_bytes",
            "Sizes of the sealed inputs accepted.",
            registry=registry,
            buckets=_BYTES,
        )
