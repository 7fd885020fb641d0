"""Where instances run: the local platform (the embedded default) and its interface.

* :class:`PlatformController` — the pure decisions: FnPacker's live router
  (:mod:`sealserve.packer`, the policies the simulator runs) over instances started on demand,
  kept warm for a keep-alive, scaled to zero, capped in number and concurrency, replaced when
  unhealthy, and metered in GB-seconds at each instance's own size (:class:`CostMeter`);
* :class:`PlatformConfig` — the ``[platform]`` and ``[runtime]`` settings: the policy
  (one of :data:`LIVE_POLICIES`), the instance sizes, the reserve for the host and the
  runtime, and the model budget derived from them;
* :class:`InstanceBackend` — the platform interface (start an instance, route a request or a
  load to it, check it, stop it); :class:`LocalBackend` runs each instance as a host + runtime
  process pair on this machine;
* :class:`Platform` — the driver: carries out the controller's actions on a backend, on one
  event loop, and exports Prometheus series.

See docs/operating.md, "The local platform".
"""

from sealserve.platform._actions import (
    Action,
    DecisionRecord,
    LoadModel,
    Reject,
    RunRequest,
    StartInstance,
    StopInstance,
)
from sealserve.platform._backend import InferOutcome, InstanceBackend, InstanceHealth, InstanceInfo
from sealserve.platform._capped import CappedPolicy
from sealserve.platform._catalog import ModelCatalog
from sealserve.platform._config import LIVE_POLICIES, PlatformConfig
from sealserve.platform._controller import ControllerCounters, PlatformController, RequestPhase
from sealserve.platform._local import LocalBackend, LocalOptions
from sealserve.platform._meter import CostMeter, MeteredInstance
from sealserve.platform._metrics import PlatformMetrics
from sealserve.platform._platform import Platform, PlatformResult
from sealserve.platform._priors import NamedPriors
from sealserve.platform._stats import InstanceStats, PlatformStats

__all__ = [
    "Action",
    "CappedPolicy",
    "ControllerCounters",
    "CostMeter",
    "DecisionRecord",
    "InferOutcome",
    "InstanceBackend",
    "InstanceHealth",
    "InstanceInfo",
    "InstanceStats",
    "LIVE_POLICIES",
    "LoadModel",
    "LocalBackend",
    "LocalOptions",
    "MeteredInstance",
    "ModelCatalog",
    "NamedPriors",
    "Platform",
    "PlatformConfig",
    "PlatformController",
    "PlatformMetrics",
    "PlatformResult",
    "PlatformStats",
    "Reject",
    "RequestPhase",
    "RunRequest",
    "StartInstance",
    "StopInstance",
]
