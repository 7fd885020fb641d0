"""Attestation: evidence, policies and their verification, the simulated TEE, DCAP quotes.

A verifier (the KeyService, a client) checks :class:`Evidence` with :func:`verify_evidence`
against a :class:`Policy` and its :class:`TrustAnchors`; every failure is the one fixed
:class:`~sealserve.errors.AttestationError`.  The simulated backend
(:class:`SimulatedPlatform`, served by :class:`PlatformServer`, reached with
:class:`PlatformClient`) plays the hardware for development and CI: only a process it launched
from its measured code snapshot obtains evidence (:func:`local_evidence`).  Real SGX and TDX
quotes are verified offline with :func:`verify_dcap`.  See docs/threat-model.md.
"""

from sealserve.attest._client import PlatformClient, RemoteProcess
from sealserve.attest._daemon import PlatformServer
from sealserve.attest._dcap import DcapReport, verify_dcap
from sealserve.attest._entries import ENTRIES
from sealserve.attest._evidence import (
    FORMAT_SGX_DCAP,
    FORMAT_SIMULATED,
    FORMAT_TDX_DCAP,
    FORMATS,
    REPORT_DATA_BYTES,
    Evidence,
    report_data_for,
)
from sealserve.attest._launcher import Launcher, MeasuredProcess
from sealserve.attest._local import (
    in_measured_launch,
    launch_config,
    local_evidence,
    local_sealing_key,
    passed_fds,
)
from sealserve.attest._measure import measure
from sealserve.attest._platform import LaunchedProcess, PlatformState, SimulatedPlatform
from sealserve.attest._platform_key import read_platform_public_key
from sealserve.attest._policy import (
    DEFAULT_MAX_EVIDENCE_AGE_S,
    TCB_STATUSES,
    Policy,
    TrustAnchors,
    VerifiedClaims,
    evaluate_policy,
    verify_evidence,
)

__all__ = [
    "DEFAULT_MAX_EVIDENCE_AGE_S",
    "DcapReport",
    "ENTRIES",
    "Evidence",
    "FORMATS",
    "FORMAT_SGX_DCAP",
    "FORMAT_SIMULATED",
    "FORMAT_TDX_DCAP",
    "LaunchedProcess",
    "Launcher",
    "MeasuredProcess",
    "PlatformClient",
    "PlatformServer",
    "PlatformState",
    "Policy",
    "REPORT_DATA_BYTES",
    "RemoteProcess",
    "SimulatedPlatform",
    "TCB_STATUSES",
    "TrustAnchors",
    "VerifiedClaims",
    "evaluate_policy",
    "in_measured_launch",
    "launch_config",
    "local_evidence",
    "local_sealing_key",
    "measure",
    "passed_fds",
    "read_platform_public_key",
    "report_data_for",
    "verify_dcap",
    "verify_evidence",
]
