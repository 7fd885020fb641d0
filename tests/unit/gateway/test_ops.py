"""The gateway's operations endpoints: the health probes follow its lifecycle and its
platform, and Prometheus discovers every service to scrape from it."""

from __future__ import annotations

import asyncio

import httpx

from sealserve._health import Health
from sealserve.gateway import Gateway, ScrapeTarget
from sealserve.gateway._http import HttpServer
from tests.unit.gateway.lean import LeanClientTransport
from tests.unit.gateway.test_app import FakePlatform, Models


def test_readiness_follows_startup_the_platform_and_draining() -> None:
    platform_open = {"value": True}
    gateway = Gateway(
        FakePlatform(),
        Models(),
        health=Health(ready_checks=(lambda: None if platform_open["value"] else "closed",)),
    )

    async def main() -> None:
        transport = LeanClientTransport(HttpServer(app=gateway.app, routes=gateway.lean_routes()))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

            async def probe(path: str) -> tuple[int, object]:
                r = await client.get(path)
                return r.status_code, r.json()

            assert await probe("/v2/health/live") == (200, {"live": True})
            assert await probe("/v2/health/ready") == (
                503,
                {"ready": False, "reason": "the gateway is starting"},
            )
            await gateway.startup()
            assert await probe("/v2/health/ready") == (200, {"ready": True})
            platform_open["value"] = False
            assert await probe("/v2/health/ready") == (503, {"ready": False, "reason": "closed"})
            platform_open["value"] = True
            gateway.drain()
            assert await probe("/v2/health/ready") == (
                503,
                {"ready": False, "reason": "the gateway is stopping"},
            )
            assert await probe("/healthz") == (200, {"status": "ok"})  # beside the new ones

    asyncio.run(main())


def test_prometheus_discovers_each_service_with_its_scheme_and_labels() -> None:
    targets = [
        ScrapeTarget("gateway", "https://127.0.0.1:8480"),
        ScrapeTarget("keyservice", "http://[::1]:8470"),
        ScrapeTarget("instance", "https://127.0.0.1:41234", {"sealserve_instance": "3"}),
    ]
    gateway = Gateway(FakePlatform(), Models(), scrape_targets=lambda: targets)
    bare = Gateway(FakePlatform(), Models())

    async def main() -> None:
        for app, want in (
            (
                gateway.app,
                [
                    {"targets": ["127.0.0.1:8480"],
                     "labels": {"sealserve_service": "gateway", "__scheme__": "https"}},
                    {"targets": ["[::1]:8470"],
                     "labels": {"sealserve_service": "keyservice", "__scheme__": "http"}},
                    {"targets": ["127.0.0.1:41234"],
                     "labels": {"sealserve_service": "instance", "__scheme__": "https",
                                "sealserve_instance": "3"}},
                ],
            ),
            (bare.app, []),
        ):  # fmt: skip
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                r = await client.get("/v1/prometheus/targets")
                assert (r.status_code, r.json()) == (200, want)

    asyncio.run(main())
