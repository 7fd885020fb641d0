"""FnPacker: many models share the instances of one serverless function.

A :class:`FunctionGroup` is a pool of instances; a :class:`Policy` decides where each request
goes (:class:`Decision`: run on an instance, start one, or wait); a :class:`Router` applies the
decisions and feeds measurements back to the policy.  The trace simulator (:func:`simulate`)
and the live router run the same policy objects.  Policies: ``dedicated`` (one function per
model on the group's instance configuration: the baseline), ``sesemi`` (SeSeMI's router),
``lru-multiplex`` (Ray Serve's model multiplexing) and ``sealserve`` (expected-completion-time
routing over resident models, on instances of a few sizes), with two variants:
``dedicated-fitted`` (every model's function sized for its model) and ``sesemi-1model`` (one
model per instance).
"""

from sealserve.packer._config import GroupConfig
from sealserve.packer._costs import COSTS_SCHEMA, CostModel, ModelCosts
from sealserve.packer._decision import Decision, DecisionKind, InstanceShape, RouteRequest
from sealserve.packer._dedicated import (
    DedicatedPolicy,
    FittedDedicatedPolicy,
    UniformDedicatedPolicy,
)
from sealserve.packer._group import Assignment, FunctionGroup, LoadPlan, ReadyActions
from sealserve.packer._instance import Instance, InstanceState
from sealserve.packer._multiplex import LruMultiplexPolicy
from sealserve.packer._policy import Policy
from sealserve.packer._reference import ideal_packing_gb_s, ideal_shaped_gb_s, pack_memory_mb
from sealserve.packer._registry import POLICY_ALIASES, POLICY_NAMES, make_policy
from sealserve.packer._router import Routed, Router
from sealserve.packer._sealserve import CostPriors, SealservePolicy
from sealserve.packer._sesemi import OneModelSesemiPolicy, SesemiPolicy
from sealserve.packer._sim import SimResult, simulate
from sealserve.packer._spares import SpareConfig, SparePolicy
from sealserve.packer._stats import LoadStats
from sealserve.packer._synthetic import SyntheticConfig, synthetic_trace
from sealserve.packer._trace import (
    Trace,
    TraceRequest,
    parse_trace_csv,
    read_trace_csv,
    write_trace_csv,
)

__all__ = [
    "Assignment",
    "COSTS_SCHEMA",
    "CostModel",
    "CostPriors",
    "Decision",
    "DecisionKind",
    "DedicatedPolicy",
    "FittedDedicatedPolicy",
    "FunctionGroup",
    "GroupConfig",
    "Instance",
    "InstanceShape",
    "InstanceState",
    "LoadPlan",
    "LoadStats",
    "LruMultiplexPolicy",
    "ModelCosts",
    "OneModelSesemiPolicy",
    "POLICY_ALIASES",
    "POLICY_NAMES",
    "Policy",
    "ReadyActions",
    "RouteRequest",
    "Routed",
    "Router",
    "SealservePolicy",
    "SesemiPolicy",
    "SimResult",
    "SpareConfig",
    "SparePolicy",
    "SyntheticConfig",
    "Trace",
    "TraceRequest",
    "UniformDedicatedPolicy",
    "ideal_packing_gb_s",
    "ideal_shaped_gb_s",
    "make_policy",
    "pack_memory_mb",
    "parse_trace_csv",
    "read_trace_csv",
    "simulate",
    "synthetic_trace",
    "write_trace_csv",
]
