"""The platform driver over a backend in memory (the real interface, no process), with a
manual clock: requests served through cold start and load, keep-alive, failures, closing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import pytest

from sealserve import ResourceState, ResourceStateError
from sealserve._clock import ManualClock
from sealserve.errors import (
    DeadlineExceeded,
    PlatformError,
    RuntimeUnavailable,
    SealserveError,
)
from sealserve.platform import (
    InferOutcome,
    InstanceBackend,
    InstanceHealth,
    InstanceInfo,
    Platform,
    PlatformConfig,
)

USER = "c" * 64
T = TypeVar("T")


class MemoryBackend:
    """Instances that exist only as entries of a dict; each call is recorded."""

    def __init__(self) -> None:
        self.running: dict[int, InstanceInfo] = {}
        self.started: list[int] = []
        self.stopped: list[int] = []
        self.loads: list[tuple[int, str, str]] = []
        self.evicted: list[tuple[int, str]] = []
        self.start_errors: list[SealserveError] = []
        self.infer_errors: list[Exception] = []
        self.health_of: dict[int, InstanceHealth] = {}
        #: What each instance was started as: (memory_mb, budget_mb, concurrency).
        self.shapes: dict[int, tuple[int, float, int]] = {}
        #: What each instance uses, as a backend that measures it reports it.
        self.resident_mb: dict[int, float] = {}
        self.closed = False

    async def start(
        self, instance_id: int, *, memory_mb: int, budget_mb: float, concurrency: int
    ) -> InstanceInfo:
        await asyncio.sleep(0)
        if self.start_errors:
            raise self.start_errors.pop(0)
        info = InstanceInfo(instance_id=instance_id, url=f"mem://{instance_id}", pid=100)
        self.running[instance_id] = info
        self.started.append(instance_id)
        self.shapes[instance_id] = (memory_mb, budget_mb, concurrency)
        return info

    async def load(
        self, instance_id: int, *, model_id: str, user_id: str, timeout_s: float
    ) -> Mapping[str, float]:
        await asyncio.sleep(0)
        self.loads.append((instance_id, model_id, user_id))
        return {"model_fetch": 5.0, "model_unseal_session": 20.0, "total": 26.0}

    async def evict(self, instance_id: int, *, model_id: str) -> bool:
        self.evicted.append((instance_id, model_id))
        return True

    async def infer(
        self,
        instance_id: int,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes,
        deadline_ms: int,
    ) -> InferOutcome:
        await asyncio.sleep(0)
        if self.infer_errors:
            raise self.infer_errors.pop(0)
        return InferOutcome(b"out:" + sealed_input, {"inference": 2.0, "total": 3.0})

    async def health(self, instance_id: int) -> InstanceHealth:
        return self.health_of.get(instance_id, InstanceHealth.READY)

    async def stop(self, instance_id: int) -> None:
        if self.running.pop(instance_id, None) is not None:
            self.stopped.append(instance_id)

    def describe(self, instance_id: int) -> InstanceInfo | None:
        info = self.running.get(instance_id)
        if info is None or instance_id not in self.resident_mb:
            return info
        return dataclasses.replace(info, resident_mb=self.resident_mb[instance_id])

    async def close(self) -> None:
        self.closed = True


def run(
    body: Callable[[Platform, MemoryBackend, ManualClock], Awaitable[T]],
    *,
    sizes: Mapping[str, float] | None = None,
    **config: Any,
) -> T:
    backend = MemoryBackend()
    assert isinstance(backend, InstanceBackend)
    clock = ManualClock(start=1_000.0)
    config.setdefault("spares", 0)  # the tests of spares ask for them
    platform = Platform(
        backend,
        config=PlatformConfig(**config),
        model_memory_mb=lambda m: (sizes or {}).get(m, 50.0),
        clock=clock,
        autotick=False,
    )

    async def main() -> T:
        async with platform:
            return await body(platform, backend, clock)

    return asyncio.run(main())


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def infer(platform: Platform, clock: ManualClock, model: str = "m", rid: str = "r1") -> Any:
    return await platform.infer(
        model_id=model,
        user_id=USER,
        request_id=rid,
        sealed_input=b"sealed",
        deadline_s=clock.time() + 30,
    )


def test_a_request_is_served_through_a_cold_start_and_a_load_then_warm() -> None:
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        first = await infer(platform, clock)
        assert first.sealed_output == b"out:sealed"
        assert first.instance_id == 0
        assert first.decision is not None
        assert first.decision.kind == "start"
        for stage in ("cold_start", "model_load", "model_fetch", "inference", "queue", "platform"):
            assert stage in first.timings, stage
        assert backend.loads == [(0, "m", USER)]
        second = await infer(platform, clock, rid="r2")
        assert second.decision is not None
        assert second.decision.kind == "run"
        assert "cold_start" not in second.timings
        assert "model_load" not in second.timings
        stats = platform.stats()
        assert stats.counters["served"] == 2
        assert stats.counters["cold_starts"] == 1
        assert stats.instances[0].url == "mem://0"
        assert platform.policy == "sealserve"

    run(body)


def test_an_idle_instance_stops_after_its_keep_alive_and_the_next_request_starts_one() -> None:
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        await infer(platform, clock)
        clock.advance(59.0)
        await platform.tick()
        await settle()
        assert backend.stopped == []
        clock.advance(1.0)
        await platform.tick()
        await settle()
        assert backend.stopped == [0]
        assert platform.stats().instances == ()
        assert platform.stats().gb_seconds == pytest.approx(2.0 * 60.0)
        await infer(platform, clock, rid="r2")
        assert backend.started == [0, 1]

    run(body, keep_alive_s=60.0, instance_memory_mb=2048, sizes_mb=())


def test_instances_start_at_the_routers_sizes_and_are_billed_at_them() -> None:
    """896 and 1,408 MB beside the platform's 2,048 MB, with the measured 384 MB reserve:
    512, 1,024 and 1,664 MB for models."""

    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        await infer(platform, clock, model="small")
        await infer(platform, clock, model="large", rid="r2")
        clock.advance(10.0)
        stats = platform.stats()
        by_id = {i.instance_id: i for i in stats.instances}
        group = platform.controller.router.group
        assert set(backend.shapes) == set(by_id)
        for iid, (memory, budget, concurrency) in backend.shapes.items():
            # The backend got the router's shape: its size, and its runtime's budget.
            assert (memory, budget) == (
                group.instance(iid).memory_mb,
                group.instance(iid).budget_mb,
            )
            assert (by_id[iid].memory_mb, by_id[iid].budget_mb) == (memory, budget)
            assert concurrency == 2
            assert by_id[iid].gb_s == pytest.approx(memory / 1024 * 10.0)
        assert sorted(m for m, _, _ in backend.shapes.values()) == [896, 2048]
        assert stats.gb_seconds == pytest.approx((896 + 2048) / 1024 * 10.0)
        assert stats.config["shapes"] == [
            {"memory_mb": 896, "budget_mb": 512.0},
            {"memory_mb": 1408, "budget_mb": 1024.0},
            {"memory_mb": 2048, "budget_mb": 1664.0},
        ]

    run(body, sizes={"small": 50.0, "large": 1200.0}, instance_concurrency=2)


def test_what_an_instance_uses_is_reported_beside_its_size_and_going_over_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        await infer(platform, clock)
        (inst,) = platform.stats().instances
        assert inst.resident_mb is None  # not measured yet
        backend.resident_mb[inst.instance_id] = 1000.0
        with caplog.at_level(logging.WARNING, logger="sealserve"):
            await platform.check_health()
            await platform.check_health()  # logged once while it stays over
        over = [r for r in caplog.records if r.getMessage() == "platform.instance_over_memory"]
        assert len(over) == 1
        assert over[0].sealserve_fields == {  # type: ignore[attr-defined]
            "instance": inst.instance_id,
            "resident_mb": 1000.0,
            "memory_mb": 896,
        }
        (inst,) = platform.stats().instances
        assert (inst.resident_mb, inst.memory_mb) == (1000.0, 896)
        assert inst.to_json()["resident_mb"] == 1000.0
        samples = {
            (sample.name, sample.labels.get("kind")): sample.value
            for family in text_string_to_metric_families(
                generate_latest(platform.registry).decode()
            )
            for sample in family.samples
        }
        mib = 2.0**20
        assert samples[("sealserve_platform_memory_bytes", "configured")] == 896 * mib
        assert samples[("sealserve_platform_memory_bytes", "budget")] == 512 * mib
        assert samples[("sealserve_platform_memory_bytes", "resident")] == 1000 * mib
        assert samples[("sealserve_platform_instances_over_memory", None)] == 1.0

    run(body)


def test_a_runtime_lost_under_a_request_is_a_retryable_error() -> None:
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        await infer(platform, clock)
        backend.infer_errors.append(RuntimeUnavailable("the runtime died"))
        with pytest.raises(RuntimeUnavailable) as info:
            await infer(platform, clock, rid="r2")
        assert info.value.retryable
        assert platform.stats().counters["runtime_failures"] == 1
        third = await infer(platform, clock, rid="r3")  # the instance serves on
        assert third.sealed_output == b"out:sealed"

    run(body)


def test_health_checks_with_a_spare_alive_and_memory_measured() -> None:
    # A spare is kept out of the router's group: the memory check asked the group for it,
    # which raised, and the timer loop that runs the checks (and every keep-alive) ended, so
    # the gateway never scaled to zero again.
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        for iid in range(8):
            backend.resident_mb[iid] = 100.0
        await asyncio.gather(*(infer(platform, clock, model=m, rid=m) for m in ("a", "b", "c")))
        await settle()
        assert len(backend.started) == 4, backend.started  # three instances and a spare
        await platform.check_health()
        clock.advance(10.0)
        await platform.tick()
        await settle()
        assert not platform.stats().instances  # all of them, the spare too, scaled to zero

    run(body, spares=1, max_instances=5, instance_concurrency=1, keep_alive_s=3.0)


def test_a_backend_call_that_fails_unexpectedly_is_still_answered_retryably() -> None:
    # Before, an exception other than sealserve's, OSError or ValueError ended the request's
    # task: the caller waited for the driver's own bound, past its client's patience.
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        await infer(platform, clock)
        backend.infer_errors.append(RuntimeError("a bug in the backend"))
        with pytest.raises(PlatformError) as info:
            await asyncio.wait_for(infer(platform, clock, rid="r2"), 5.0)
        assert info.value.retryable
        assert "RuntimeError" in str(info.value)
        assert platform.stats().in_flight == 0  # its slot was let go
        third = await infer(platform, clock, rid="r3")  # the instance serves on
        assert third.sealed_output == b"out:sealed"

    run(body)


def test_instances_that_do_not_start_are_replaced_then_the_request_is_refused() -> None:
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        backend.start_errors += [PlatformError("exit 1"), PlatformError("exit 1")]
        with pytest.raises(PlatformError, match="before the request ran") as info:
            await infer(platform, clock)
        assert info.value.retryable
        assert platform.stats().counters["failed_starts"] == 2
        result = await infer(platform, clock, rid="r2")  # the third start works
        assert result.instance_id == 2

    run(body, max_reroutes=1)


def test_a_gone_instance_is_replaced() -> None:
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        await infer(platform, clock)
        backend.health_of[0] = InstanceHealth.GONE
        await platform.check_health()
        await settle()
        assert backend.stopped == [0]
        assert platform.stats().counters["instances_replaced"] == 1
        result = await infer(platform, clock, rid="r2")
        assert result.instance_id == 1

    run(body)


def test_a_deadline_already_past_is_refused_before_routing() -> None:
    async def body(platform: Platform, backend: MemoryBackend, clock: ManualClock) -> None:
        with pytest.raises(DeadlineExceeded, match="passed before it arrived"):
            await platform.infer(
                model_id="m",
                user_id=USER,
                request_id="r",
                sealed_input=b"x",
                deadline_s=clock.time() - 1,
            )
        assert backend.started == []

    run(body)


def test_closing_stops_every_instance_and_refuses_new_requests() -> None:
    backend = MemoryBackend()
    clock = ManualClock()
    platform = Platform(
        backend,
        config=PlatformConfig(),
        model_memory_mb=lambda _m: 50.0,
        clock=clock,
        autotick=False,
    )

    async def main() -> None:
        await platform.open()
        await infer(platform, clock)
        await platform.close()
        assert platform.state is ResourceState.CLOSED
        assert backend.stopped == [0]
        assert backend.closed
        with pytest.raises(ResourceStateError, match="closed"):
            await infer(platform, clock, rid="r2")

    asyncio.run(main())
