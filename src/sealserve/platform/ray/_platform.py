"""The gateway's platform on Ray Serve: requests go through the deployment's handle.

:class:`RayPlatform` is what the gateway needs of a platform
(:class:`~sealserve.gateway.InferenceBackend`: ``infer``, ``stats``, ``policy``), over a Ray
Serve handle to the ``SealedInstance`` deployment.  Each request names its model as the
handle's ``multiplexed_model_id``, so Ray Serve's request router in this process (FnPacker's,
:class:`~sealserve.platform.ray._router.FnPackerRequestRouter`) sends it to the replica the policy
chose; the answer carries the decision (:meth:`ReplicaPacker.decision_for`) like the local
platform's.  The same gateway API and client work unchanged.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.errors import DeadlineExceeded, PlatformError, SealserveError
from sealserve.platform import PlatformResult, PlatformStats
from sealserve.platform.ray._options import RayOptions
from sealserve.platform.ray._packer import ReplicaPacker
from sealserve.platform.ray._registry import packer_for
from sealserve.protocol import raise_for_error

__all__ = ["RayPlatform"]

_log = get_logger(__name__)
#: Added to a request's deadline before the caller stops waiting on its own (the instance
#: enforces the deadline; this only bounds an answer that never comes).  Shorter than the
#: grace a client gives the gateway (``GatewayClient``: 5 s), so that the client hears a
#: retryable error rather than nothing.
_ANSWER_GRACE_S: Final = 2.0
#: How often a waiting request checks that its instance is still there.
_WATCH_S: Final = 0.5


class RayPlatform:
    """Sealed inference through a Ray Serve handle (see the module docstring).

    ``handle`` is the deployment's ``DeploymentHandle`` (from
    :func:`~sealserve.platform.ray.deploy` or ``serve.get_deployment_handle``).
    """

    def __init__(self, handle: Any, *, options: RayOptions, clock: Clock = SYSTEM_CLOCK) -> None:
        if not isinstance(options, RayOptions):
            raise TypeError(f"options must be RayOptions, got {type(options).__name__}")
        self.options = options
        self.packer: ReplicaPacker = packer_for(options.router_kwargs())
        self._handle = handle
        self._clock = clock

    @property
    def policy(self) -> str:
        return self.packer.policy_name

    def stats(self) -> PlatformStats:
        return self.packer.snapshot(time.monotonic())

    async def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray,
        deadline_s: float,
    ) -> PlatformResult:
        """Serve one sealed request by ``deadline_s`` (Unix seconds) on the replica FnPacker
        chooses; raises sealserve's errors (``retryable`` where sending it again may help)."""
        began = time.monotonic()
        remaining = deadline_s - self._clock.time()
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before it arrived")
        handle = self._handle.options(multiplexed_model_id=model_id)
        response = handle.infer.remote(
            model_id=model_id,
            user_id=user_id,
            request_id=request_id,
            sealed_input=sealed_input,
            deadline_ms=int(deadline_s * 1000),
        )
        try:
            answer = await self._answer(response, request_id, remaining + _ANSWER_GRACE_S)
        except TimeoutError:
            response.cancel()
            raise DeadlineExceeded("no answer from Ray Serve by the deadline") from None
        except SealserveError:
            raise
        except Exception as exc:  # Ray's own errors: a replica that died, a deployment gone
            _log.event("ray_platform.call_failed", error=type(exc).__name__)
            error = PlatformError(f"Ray Serve could not serve the request ({type(exc).__name__})")
            error.retryable = True
            raise error from exc
        status = int(answer.get("status", 500))
        if status != 200:
            self.packer.note_failure()
            raise_for_error(status, bytes(answer.get("error", b"")))
        replica_id = str(answer.get("replica_id", ""))
        instance = self.packer.instance_for(replica_id)
        decision = self.packer.decision_for(request_id)
        timings = {str(k): float(v) for k, v in dict(answer.get("timings", {})).items()}
        timings["platform"] = (time.monotonic() - began) * 1000
        return PlatformResult(
            request_id=request_id,
            sealed_output=bytes(answer["sealed_output"]),
            timings=timings,
            decision=decision,
            instance_id=instance if instance is not None else -1,
        )

    async def _answer(self, response: Any, request_id: str, timeout_s: float) -> dict[str, Any]:
        """The replica's answer within ``timeout_s``; a request whose instance the router saw
        go (its replica died, its node was removed) is not waited for: Ray Serve may take its
        time to give up on a replica that does not answer, and the client, which sends it again
        at once, would have given up first (a retryable error)."""
        task = asyncio.ensure_future(_result(response))
        end = time.monotonic() + timeout_s
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({task}, timeout=min(_WATCH_S, left))
                if done:
                    return task.result()
                decision = self.packer.decision_for(request_id)
                instance = decision.instance_id if decision is not None else None
                if instance is not None and self.packer.lost(instance):
                    response.cancel()
                    _log.event("ray_platform.instance_lost", instance=instance)
                    error = PlatformError(
                        f"the instance serving the request went away (instance {instance})"
                    )
                    error.retryable = True
                    raise error
        finally:
            if not task.done():
                task.cancel()

    def __repr__(self) -> str:
        return f"RayPlatform(app={self.options.app_name!r}, policy={self.policy!r})"


async def _result(response: Any) -> dict[str, Any]:
    answer = await response
    if not isinstance(answer, dict):
        raise PlatformError(f"the replica answered a {type(answer).__name__}, not a dict")
    return answer
