"""OpenWhisk packaging: the instance as a blackbox (Docker) action, unchanged.

The instance host already speaks the action contract (``POST /init``, ``POST /run`` on port
8080, concurrent runs, the end-of-activation marker); :func:`write_package` writes what
deploying it needs: a Dockerfile that installs sealserve's own wheel (:func:`build_wheel`),
its entrypoint, the action's spec, a wskdeploy manifest, the ``wsk`` commands and a README,
with memory, timeout and concurrency from sealserve's settings.  In the container,
:func:`action_limits` takes the budget and the concurrency from the limits the action really
has, and the runtime is launched by the node's TEE platform daemon (no key in the image).
See docs/platforms.md.
"""

from sealserve.platform.openwhisk._action import (
    ActionLimits,
    action_limits,
    host_command,
    read_spec,
)
from sealserve.platform.openwhisk._package import OpenWhiskOptions, build_wheel, write_package

__all__ = [
    "ActionLimits",
    "OpenWhiskOptions",
    "action_limits",
    "build_wheel",
    "host_command",
    "read_spec",
    "write_package",
]
