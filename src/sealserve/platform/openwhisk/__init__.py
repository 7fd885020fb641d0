"""OpenWhisk packaging: the instance as a blackbox (Docker) action, unchanged.

The instance host already speaks the action contract (``POST /init``, ``POST /run`` on port
8080, concurrent runs, the end-of-activation marker); :func:`write_package` writes what
deploying it needs: a Dockerfile, its entrypoint, a wskdeploy manifest, the ``wsk`` commands
and a README, with memory, timeout and concurrency from sealserve's settings.  See
docs/platforms.md.
"""

from sealserve.platform.openwhisk._package import OpenWhiskOptions, write_package

__all__ = ["OpenWhiskOptions", "write_package"]
