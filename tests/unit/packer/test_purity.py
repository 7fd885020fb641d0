"""``Policy.route`` is a pure decision (the interface's contract): asked twice with the same
request, group and time, every policy decides the same, and neither the policy's state nor the
group's changed.  Checked at every routing of a simulated bursty trace."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import types
from typing import Any

import pytest

from sealserve.packer import (
    POLICY_NAMES,
    CostModel,
    Decision,
    FunctionGroup,
    GroupConfig,
    Policy,
    RouteRequest,
    SyntheticConfig,
    make_policy,
    simulate,
    synthetic_trace,
)
from sealserve.packer._instance import Instance


def snapshot(value: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """``value``'s state as plain data that compares by value (functions by name only)."""
    if value is None or isinstance(value, bool | int | str | bytes | enum.Enum):
        return value
    if isinstance(value, float):
        return "nan" if math.isnan(value) else value
    if isinstance(value, type | types.FunctionType | types.MethodType | types.BuiltinMethodType):
        return f"<{getattr(value, '__qualname__', type(value).__name__)}>"
    if id(value) in _seen:
        return "<cycle>"
    seen = _seen | {id(value)}
    if isinstance(value, dict):
        return {repr(k): snapshot(v, seen) for k, v in value.items()}
    if isinstance(value, list | tuple | collections.deque):
        return [snapshot(v, seen) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(repr(snapshot(v, seen)) for v in value)
    fields: dict[str, Any] = {}
    if hasattr(value, "__dict__"):
        fields.update(vars(value))
    for cls in type(value).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(value, slot):
                fields[slot] = getattr(value, slot)
    if not fields and not dataclasses.is_dataclass(value):
        return repr(value)
    return (type(value).__qualname__, snapshot(fields, seen))


class Checked(Policy):
    """Runs ``inner``; at every routing asks it twice and checks nothing changed."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.resident_limit = inner.resident_limit
        self.routings = 0

    @property  # type: ignore[override]
    def name(self) -> str:  # the inner policy's, for the simulator's reports
        return self.inner.name

    def route(self, request: RouteRequest, group: FunctionGroup, now: float) -> Decision:
        before = (snapshot(self.inner), snapshot(group))
        first = self.inner.route(request, group, now)
        second = self.inner.route(request, group, now)
        assert first == second, (self.inner.name, request)
        assert (snapshot(self.inner), snapshot(group)) == before, (self.inner.name, request)
        self.routings += 1
        return first

    def on_arrival(self, request: RouteRequest, now: float) -> None:
        self.inner.on_arrival(request, now)

    def on_routed(
        self, request: RouteRequest, decision: Decision, group: FunctionGroup, now: float
    ) -> None:
        self.inner.on_routed(request, decision, group, now)

    def on_ready(self, instance: Instance, cold_start_s: float, now: float) -> None:
        self.inner.on_ready(instance, cold_start_s, now)

    def on_loaded(self, instance: Instance, model: str, load_s: float, now: float) -> None:
        self.inner.on_loaded(instance, model, load_s, now)

    def on_complete(
        self, request: RouteRequest, instance: Instance, exec_s: float, now: float
    ) -> None:
        self.inner.on_complete(request, instance, exec_s, now)

    def on_stopped(self, instance: Instance, now: float) -> None:
        self.inner.on_stopped(instance, now)

    def options(self) -> dict[str, Any]:
        return self.inner.options()


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_the_snapshot_sees_what_a_policy_learns(name: str, costs: CostModel) -> None:
    policy = make_policy(name, priors=costs)
    before = snapshot(policy)
    assert snapshot(policy) == before
    policy.on_arrival(RouteRequest(1, "small", 0.0), 0.0)
    policy.__dict__["_probe"] = None  # what the old sealserve route did: remember something
    assert snapshot(policy) != before


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_route_changes_nothing_and_decides_the_same_twice(
    name: str, costs: CostModel, config: GroupConfig
) -> None:
    trace = synthetic_trace(3, SyntheticConfig(models=5, duration_s=240.0))
    checked = Checked(make_policy(name, priors=costs))
    result = simulate(trace, checked, costs, config=config, seed=1)
    assert checked.routings >= len(trace.requests)
    assert result.cold_starts > 0
