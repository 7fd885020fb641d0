"""Spare instances: started, attested and ready before a request needs one (stem cells).

OpenWhisk keeps prewarmed "stem cell" containers that become any action's container; here a
spare is an instance of one of the group's sizes, its runtime started and its KeyService
attested, holding no model.  When a policy decides to start an instance of that size, the
router hands it a spare instead (:meth:`FunctionGroup.start`): the request waits for a model
load, not for a cold start.  Policies never see spares (they are not among the group's
instances until taken), so their decisions are the same with or without them.

A spare is billed like any instance, from its start to its stop (or to the moment a request
takes it, after which it is an ordinary instance).  So the pool keeps spares only while new
instances are being asked for: :class:`SparePolicy` wants ``max_spares`` spares of the size
most recently started once ``min_starts`` instance starts fell within the last ``window_s``,
and none otherwise; a spare nobody takes stops after the keep-alive, like an idle instance.
The cost is counted: the simulator and the platform meter bill spares with the rest and
report their share.

Pure: the caller passes ``now``.
"""

from __future__ import annotations

import collections
import dataclasses
import math

from sealserve.packer._decision import InstanceShape

__all__ = ["SpareConfig", "SparePolicy"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpareConfig:
    """How many spares to keep at most, and when demand for new instances justifies them.

    ``window_s`` defaults to the group's keep-alive.
    """

    max_spares: int = 1
    min_starts: int = 2
    window_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_spares", "min_starts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.min_starts < 1:
            raise ValueError(f"min_starts must be >= 1, got {self.min_starts!r}")
        if self.window_s is not None and (not self.window_s > 0 or math.isinf(self.window_s)):
            raise ValueError(f"window_s must be a finite number > 0, got {self.window_s!r}")


class SparePolicy:
    """How many spares of which size the group wants now (see the module docstring)."""

    def __init__(self, config: SpareConfig, *, keep_alive_s: float) -> None:
        self.config = config
        self.window_s = config.window_s if config.window_s is not None else keep_alive_s
        self._starts: collections.deque[float] = collections.deque()
        self._shape: InstanceShape | None = None

    def note_start(self, shape: InstanceShape, now: float) -> None:
        """An instance was started for a request (from a spare or cold)."""
        self._starts.append(now)
        self._shape = shape
        self._trim(now)

    def wanted(self, now: float) -> tuple[InstanceShape | None, int]:
        """The size and the number of spares to keep now."""
        self._trim(now)
        if self._shape is None or len(self._starts) < self.config.min_starts:
            return self._shape, 0
        return self._shape, self.config.max_spares

    def _trim(self, now: float) -> None:
        while self._starts and self._starts[0] < now - self.window_s:
            self._starts.popleft()
