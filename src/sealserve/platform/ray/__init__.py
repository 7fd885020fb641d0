"""sealserve on Ray Serve, for clusters: instances as replicas, FnPacker as the request router.

* :class:`RayOptions` — the deployment: the platform's settings and where each node keeps
  the model store, the TEE platform daemon and the KeyService pin; its mapping to Ray Serve
  (autoscaling, concurrency, health checks, the request router);
* :class:`SealedInstance` — the deployment class: each replica runs one instance (host +
  sealed runtime, launched through the node's TEE platform, as the local platform does);
* ``FnPackerRequestRouter`` (``sealserve.platform.ray._router``, which Ray Serve loads by
  that path) — Ray Serve's request router whose choice is FnPacker's, over
  :class:`ReplicaPacker` (the pure core: the same policy objects as the simulator);
* :class:`PackerAutoscaler` — Ray Serve's autoscaling policy: a replica when the router
  holds requests, one fewer per replica idle past the keep-alive;
* :class:`RayPlatform` — the gateway's platform over the deployment handle;
* :func:`connect`, :func:`deploy`, :func:`undeploy`, :func:`disconnect`, and :func:`stop`
  (the bounded stop: deletes the app and leaves Ray, killing what does not stop).

``ray`` is an optional dependency (the ``ray`` extra): importing :mod:`sealserve.platform`
never imports it, and this package imports it only when it connects or deploys.  See
docs/platforms.md.
"""

from sealserve.platform.ray._autoscale import PackerAutoscaler
from sealserve.platform.ray._options import RayOptions
from sealserve.platform.ray._packer import ReplicaPacker, ReplicaView
from sealserve.platform.ray._platform import RayPlatform
from sealserve.platform.ray._replica import SealedInstance
from sealserve.platform.ray._serve import (
    build_application,
    connect,
    deploy,
    disconnect,
    stop,
    undeploy,
)

__all__ = [
    "PackerAutoscaler",
    "RayOptions",
    "RayPlatform",
    "ReplicaPacker",
    "ReplicaView",
    "SealedInstance",
    "build_application",
    "connect",
    "deploy",
    "disconnect",
    "stop",
    "undeploy",
]
