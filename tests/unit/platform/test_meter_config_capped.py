"""The cost meter, the platform's configuration, and the policy wrapper it routes with."""

from __future__ import annotations

from typing import Any

import pytest

from sealserve.config import PlatformSettings, Settings
from sealserve.errors import ConfigError
from sealserve.packer import (
    Decision,
    DecisionKind,
    FunctionGroup,
    GroupConfig,
    Instance,
    Policy,
    Router,
    RouteRequest,
)
from sealserve.platform import CappedPolicy, CostMeter, PlatformConfig

# -- the meter -----------------------------------------------------------------------------------


def test_gb_seconds_are_configured_memory_times_time_alive() -> None:
    meter = CostMeter()
    meter.start(0, memory_mb=2048, now=10.0)
    meter.start(1, memory_mb=512, now=20.0)
    assert meter.gb_seconds(30.0) == pytest.approx(2.0 * 20 + 0.5 * 10)
    assert meter.stop(0, now=40.0)
    assert not meter.stop(0, now=50.0)  # already stopped: billing does not move
    assert meter.gb_seconds(100.0, 0) == pytest.approx(60.0)
    assert meter.gb_seconds(100.0, 1) == pytest.approx(40.0)
    assert meter.per_instance(100.0) == {0: pytest.approx(60.0), 1: pytest.approx(40.0)}
    assert meter.instance_seconds(100.0) == pytest.approx(30.0 + 80.0)
    assert (meter.started, meter.running) == (2, 1)
    assert meter.is_running(1)
    assert not meter.is_running(0)


def test_the_meter_refuses_what_cannot_be_billed() -> None:
    meter = CostMeter()
    with pytest.raises(ValueError, match="memory_mb must be an int >= 1, got 0"):
        meter.start(0, memory_mb=0, now=0.0)
    meter.start(0, memory_mb=1, now=0.0)
    with pytest.raises(ValueError, match="instance_id 0 is already metered"):
        meter.start(0, memory_mb=1, now=0.0)
    with pytest.raises(ValueError, match="instance_id 7 is not metered"):
        meter.stop(7, now=1.0)
    with pytest.raises(ValueError, match="now must be a finite time"):
        meter.start(1, memory_mb=1, now=float("nan"))


# -- the configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("policy", "fastest", "policy has value 'fastest'"),
        ("keep_alive_s", 0, "keep_alive_s must be a finite number > 0, got 0"),
        ("max_instances", 0, "max_instances must be an int >= 1, got 0"),
        ("instance_concurrency", True, "instance_concurrency must be an int >= 1, got True"),
        ("memory_factor", 0.5, "memory_factor must be >= 1, got 0.5"),
        ("max_reroutes", -1, "max_reroutes must be an int >= 0, got -1"),
        ("instance_memory_mb", 512, "instance_memory_mb (512) must be at least memory_budget_mb"),
    ],
)
def test_a_bad_setting_names_itself_and_its_value(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PlatformConfig(**{field: value})


def test_the_platform_reads_its_settings() -> None:
    settings = Settings(platform=PlatformSettings(keep_alive_s=30.0, max_instances=2))
    config = PlatformConfig.from_settings(settings, threads=1)
    assert (config.keep_alive_s, config.max_instances, config.threads) == (30.0, 2, 1)
    assert config.memory_budget_mb == settings.runtime.memory_budget_mb
    assert config.max_waiting == settings.gateway.max_queued
    group = config.group_config()
    assert group.keep_alive_s == 30.0
    assert group.max_instances == 2
    assert group.shape.memory_mb == config.instance_memory_mb
    bad = Settings(platform=PlatformSettings(policy="fastest"))
    with pytest.raises(ConfigError, match=r"Config 'platform\.policy' has value 'fastest'"):
        PlatformConfig.from_settings(bad)


# -- the wrapper ---------------------------------------------------------------------------------


class Recording(Policy):
    """Always starts an instance; records what it is told."""

    name = "recording"

    def __init__(self) -> None:
        self.told: list[tuple[str, float]] = []

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        return Decision.start(request.model, reason="always")

    def on_ready(self, instance: Instance, cold_start_s: float, now: float) -> None:
        self.told.append(("ready", cold_start_s))

    def on_loaded(self, instance: Instance, model: str, load_s: float, now: float) -> None:
        self.told.append(("loaded", load_s))

    def on_complete(
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        self.told.append(("complete", exec_s))


def test_a_start_past_the_platform_cap_becomes_a_wait_and_names_the_reason() -> None:
    inner = Recording()
    policy = CappedPolicy(inner, max_instances=1)
    assert policy.name == "recording"
    router = Router(policy, GroupConfig(), model_memory_mb=lambda _m: 10.0)
    first = router.route(RouteRequest(1, "a", 0.0), 0.0)
    assert first.decision.kind is DecisionKind.START
    second = router.route(RouteRequest(2, "b", 0.0), 0.0)
    assert second.decision.kind is DecisionKind.WAIT
    assert "maximum of 1 instances" in second.decision.reason
    assert "always" in second.decision.reason
    assert policy.options()["max_instances"] == 1


def test_durations_that_were_not_measured_are_not_passed_on() -> None:
    inner = Recording()
    policy = CappedPolicy(inner, max_instances=4)
    router = Router(policy, GroupConfig(), model_memory_mb=lambda _m: 10.0)
    routed = router.route(RouteRequest(1, "a", 0.0), 0.0)
    iid = routed.decision.instance_id
    assert iid is not None
    router.instance_ready(iid, 1.0)
    router.model_loaded(iid, "a", 2.0, load_s=-1.0)  # a failed load: not measured
    router.request_done(1, 3.0, exec_s=-1.0)  # never ran: not measured
    routed = router.route(RouteRequest(2, "b", 3.0), 3.0)
    assert inner.told == [("ready", 1.0)]


def test_the_wrapper_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="policy must be a Policy, got str"):
        CappedPolicy("sealserve", max_instances=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_instances must be an int >= 1, got 0"):
        CappedPolicy(Recording(), max_instances=0)


# -- priors --------------------------------------------------------------------------------------


def test_measured_priors_are_looked_up_by_the_models_name() -> None:
    from sealserve.packer import CostModel, ModelCosts
    from sealserve.platform import NamedPriors

    costs = CostModel(
        cold_start_s=2.5,
        runtime_base_mb=80.0,
        models={
            "mobilenet-v2": ModelCosts(load_s=0.2, infer_s=0.02, memory_mb=70.0),
            "resnet-50": ModelCosts(load_s=1.6, infer_s=0.12, memory_mb=380.0),
        },
    )
    priors = NamedPriors(costs)
    owner = "f" * 64
    assert priors.cold_start_s == 2.5
    assert priors.load_s(f"{owner}/mobilenet-v2") == 0.2
    assert priors.infer_s(f"{owner}/resnet-50") == 0.12
    # A name the cost model does not know takes a measured model's costs, chosen by name.
    assert priors.infer_s(f"{owner}/custom") in (0.02, 0.12)
