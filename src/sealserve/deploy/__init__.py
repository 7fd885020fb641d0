"""``sealserve up``: one machine's whole stack, wired from the parts below it.

:class:`LocalDeployment` starts, in order, the simulated TEE's platform daemon, the KeyService
(launched and attested through the daemon), the local platform (instances on demand, their
runtimes pinned to that KeyService) and the gateway in front of it; closing stops them in the
reverse order.  :class:`DeploymentOptions` says where it keeps its state and how it is
configured; :class:`DeploymentInfo` is what it prints (URLs, the runtime's measurement).

This is the only package that knows all of them: the gateway serves a platform it is given,
the platform runs instances it is given a backend for.  See docs/operating.md.
"""

from sealserve.deploy._local import (
    DeploymentInfo,
    DeploymentOptions,
    LocalDeployment,
    platform_health,
    platform_scrape_targets,
)

__all__ = [
    "DeploymentInfo",
    "DeploymentOptions",
    "LocalDeployment",
    "platform_health",
    "platform_scrape_targets",
]
