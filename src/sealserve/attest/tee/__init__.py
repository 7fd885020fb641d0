"""The TEE side of attestation: launching measured processes and obtaining their evidence.

:mod:`sealserve.attest` verifies evidence (what a client, the KeyService and a runtime
need); this package is what hosts and platforms use to produce it, kept apart so that a
verifier does not load the launchers, the platform daemon or the fork server.  The
simulated backend (:class:`SimulatedPlatform`, served by :class:`PlatformServer`, reached
with :class:`PlatformClient`) plays the hardware for development and CI: only a process it
launched (a :class:`MeasuredProcess`, through a :class:`Launcher`) from its measured code
snapshot obtains evidence.  :class:`GramineLauncher` runs SGX enclaves with ``gramine-sgx``;
:func:`snp_evidence` asks an SEV-SNP guest's kernel for a report.
"""

from sealserve.attest._client import PlatformClient, RemoteProcess
from sealserve.attest._daemon import PlatformServer
from sealserve.attest._gramine_launcher import GramineLauncher
from sealserve.attest._hw_evidence import snp_evidence
from sealserve.attest._launcher import Launcher, MeasuredProcess
from sealserve.attest._platform import LaunchedProcess, SimulatedPlatform

__all__ = [
    "GramineLauncher",
    "LaunchedProcess",
    "Launcher",
    "MeasuredProcess",
    "PlatformClient",
    "PlatformServer",
    "RemoteProcess",
    "SimulatedPlatform",
    "snp_evidence",
]
