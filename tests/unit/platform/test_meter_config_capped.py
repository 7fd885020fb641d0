"""The cost meter, the platform's configuration, and the policy wrapper it routes with."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sealserve.config import (
    RUNTIME_RESERVE_MB,
    PlatformSettings,
    RuntimeSettings,
    Settings,
    load_settings,
)
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
from sealserve.platform import LIVE_POLICIES, CappedPolicy, CostMeter, PlatformConfig

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


def test_a_spare_is_billed_and_its_time_as_a_spare_is_counted_apart() -> None:
    """A spare is billed from its start like any instance; its spare GB-s run until a request
    takes it, or until it stops untaken."""
    meter = CostMeter()
    meter.start(0, memory_mb=1024, now=0.0)  # a cold-started instance: never a spare
    meter.start(1, memory_mb=2048, now=10.0, spare=True)  # taken at 14
    meter.start(2, memory_mb=512, now=10.0, spare=True)  # never taken, stops at 30
    assert meter.spare_gb_seconds(12.0) == pytest.approx(2.0 * 2 + 0.5 * 2)
    assert meter.take(1, now=14.0)
    assert not meter.take(1, now=15.0)  # taken once
    assert not meter.take(0, now=15.0)  # not a spare
    assert meter.stop(2, now=30.0)
    assert not meter.take(2, now=31.0)  # stopped: nobody takes it any more
    assert meter.spare_gb_seconds(100.0) == pytest.approx(2.0 * 4 + 0.5 * 20)
    # The spares are in the total bill, taken or not.
    assert meter.gb_seconds(100.0) == pytest.approx(1.0 * 100 + 2.0 * 90 + 0.5 * 20)
    with pytest.raises(ValueError, match="instance_id 9 is not metered"):
        meter.take(9, now=1.0)


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
        ("instance_memory_mb", 384, "instance_memory_mb must be more than the 384 MB reserved"),
        ("memory_budget_mb", 2048, "memory_budget_mb (2048) must be less than instance_memory_mb"),
        ("memory_budget_mb", 0, "memory_budget_mb must be an int >= 1 or None, got 0"),
        ("sizes_mb", (384,), "sizes_mb must be larger than the reserve of 384 MB"),
        ("sizes_mb", ("512",), "sizes_mb must be a tuple of ints, got ('512',)"),
    ],
)
def test_a_bad_setting_names_itself_and_its_value(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PlatformConfig(**{field: value})


def test_the_platform_reads_its_settings() -> None:
    settings = Settings(platform=PlatformSettings(keep_alive_s=30.0, max_instances=2))
    config = PlatformConfig.from_settings(settings, threads=1)
    assert (config.keep_alive_s, config.max_instances, config.threads) == (30.0, 2, 1)
    assert config.model_budget_mb == settings.runtime.memory_budget_for(settings.platform)
    assert config.max_waiting == settings.gateway.max_queued
    assert config.sizes_mb == settings.platform.sizes_mb == (896, 1408)
    group = config.group_config()
    assert group.keep_alive_s == 30.0
    assert group.max_instances == 2
    assert group.shape.memory_mb == config.instance_memory_mb
    assert group.sizes_mb == (896, 1408)
    bad = Settings(platform=PlatformSettings(policy="fastest"))
    with pytest.raises(ConfigError, match=r"Config 'platform\.policy' has value 'fastest'"):
        PlatformConfig.from_settings(bad)


# -- instance sizes, the reserve and the model budget --------------------------------------------


def test_the_model_budget_is_the_instance_memory_less_the_measured_reserve() -> None:
    assert RUNTIME_RESERVE_MB == 384
    assert Settings().runtime.memory_budget_for(Settings().platform) == 2048 - 384
    config = PlatformConfig()
    assert (config.model_budget_mb, config.reserve_mb) == (1664, 384)
    assert [(s.memory_mb, s.budget_mb) for s in config.shapes] == [
        (896, 512.0),
        (1408, 1024.0),
        (2048, 1664.0),
    ]
    # The budget follows the instance's memory when it is not set ...
    bigger = PlatformConfig.from_settings(
        Settings(platform=PlatformSettings(instance_memory_mb=4096))
    )
    assert (bigger.model_budget_mb, bigger.reserve_mb) == (4096 - 384, 384)
    assert PlatformConfig(instance_memory_mb=4096).replace(
        instance_memory_mb=3072
    ).model_budget_mb == (3072 - 384)
    # ... and an explicit budget still works: it sets the reserve of every size.
    explicit = PlatformConfig.from_settings(
        Settings(
            platform=PlatformSettings(instance_memory_mb=3072, sizes_mb=(1024,)),
            runtime=RuntimeSettings(memory_budget_mb=2560),
        )
    )
    assert (explicit.model_budget_mb, explicit.reserve_mb) == (2560, 512)
    assert [(s.memory_mb, s.budget_mb) for s in explicit.shapes] == [(1024, 512.0), (3072, 2560.0)]


def test_only_the_sealserve_policy_starts_the_other_sizes() -> None:
    for policy in ("dedicated", "sesemi", "sesemi-1model", "lru-multiplex"):
        config = PlatformConfig(policy=policy)
        assert not config.uses_sizes
        assert [s.memory_mb for s in config.shapes] == [2048]
    assert PlatformConfig(policy="sealserve").uses_sizes
    assert not PlatformConfig(policy="sealserve", sizes_mb=()).uses_sizes
    assert PlatformConfig().group_config(sizes=False).sizes_mb == ()
    # Sizes too small for the reserve matter only to a policy that starts them.
    assert PlatformConfig(policy="sesemi", memory_budget_mb=1024).model_budget_mb == 1024


def test_a_budget_that_leaves_no_room_names_both_settings() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(runtime=RuntimeSettings(memory_budget_mb=2048))
    assert str(info.value) == (
        "Config 'runtime.memory_budget_mb' has value 2048. Must be less than "
        "'platform.instance_memory_mb' (2048): the instance holds the host and the runtime "
        "beside the models."
    )
    with pytest.raises(ConfigError, match=r"'platform\.instance_memory_mb' has value 256\. Must be "
                       r"more than the 384 MB .*'runtime\.memory_budget_mb'"):  # fmt: skip
        Settings(platform=PlatformSettings(instance_memory_mb=256))
    assert (
        Settings(
            platform=PlatformSettings(instance_memory_mb=256, sizes_mb=()),
            runtime=RuntimeSettings(memory_budget_mb=200),
        ).runtime.memory_budget_for(PlatformSettings(instance_memory_mb=256))
        == 200
    )


def test_sizes_that_leave_no_room_for_models_name_the_reserve_and_where_it_comes_from() -> None:
    old = Settings(runtime=RuntimeSettings(memory_budget_mb=1024))  # the earlier default
    with pytest.raises(ConfigError) as info:
        PlatformConfig.from_settings(old)
    assert str(info.value) == (
        "Config 'platform.sizes_mb' has value [896, 1408]. 896 MB leave no room for models "
        "beside the reserve of 1024 MB ('platform.instance_memory_mb' 2048 less "
        "'runtime.memory_budget_mb' 1024); give larger sizes, or [] for none."
    )
    with pytest.raises(ConfigError, match=r"256 MB leave no room for models beside the 384 MB"):
        PlatformConfig.from_settings(Settings(platform=PlatformSettings(sizes_mb=(256, 1024))))
    # With one size, or a policy that starts only that size, the old budget still works.
    assert PlatformConfig.from_settings(old, sizes_mb=()).model_budget_mb == 1024
    assert PlatformConfig.from_settings(old, policy="lru-multiplex").model_budget_mb == 1024


def test_sizes_are_read_from_a_file_and_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[platform]\nsizes_mb = [768, 1536]\n[runtime]\nthreads = 1\n")
    assert load_settings(cfg, env={}).platform.sizes_mb == (768, 1536)
    assert load_settings(
        cfg, env={"SEALSERVE_PLATFORM_SIZES_MB": " 640 ,1280"}
    ).platform.sizes_mb == (
        640,
        1280,
    )
    assert load_settings(env={"SEALSERVE_PLATFORM_SIZES_MB": ""}).platform.sizes_mb == ()
    assert load_settings(env={}).runtime.memory_budget_mb is None
    assert load_settings(
        env={"SEALSERVE_RUNTIME_MEMORY_BUDGET_MB": "1500"}
    ).runtime.memory_budget_mb == (1500)
    for env, fragment in (
        ({"SEALSERVE_PLATFORM_SIZES_MB": "512;1024"}, "'512;1024'. Not a list of ints"),
        ({"SEALSERVE_PLATFORM_SIZES_MB": "0"}, "Every size must be an int greater than zero"),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_settings(env=env)
    bad = tmp_path / "bad.toml"
    bad.write_text('[platform]\nsizes_mb = ["512"]\n')
    with pytest.raises(ConfigError, match=r"Config 'platform\.sizes_mb' \(in '.*'\) has value"):
        load_settings(bad, env={})


def test_dedicated_fitted_is_a_simulator_baseline_and_refused_live() -> None:
    assert "dedicated-fitted" not in LIVE_POLICIES
    assert set(LIVE_POLICIES) == {
        "dedicated",
        "sesemi",
        "sesemi-1model",
        "lru-multiplex",
        "sealserve",
    }
    with pytest.raises(ValueError, match="not a live policy") as info:
        PlatformConfig(policy="dedicated-fitted")
    assert "a measured runtime of its own that every owner would have to grant" in str(info.value)
    with pytest.raises(
        ConfigError, match=r"^Config 'platform\.policy' has value 'dedicated-fitted'\. "
    ):
        PlatformConfig.from_settings(Settings(platform=PlatformSettings(policy="dedicated-fitted")))


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
