"""Attestation: evidence, policies and their verification, the simulated TEE, DCAP quotes.

A verifier (the KeyService, a client) checks :class:`Evidence` with :func:`verify_evidence`
against a :class:`Policy` and its :class:`TrustAnchors`; every failure is the one fixed
:class:`~sealserve.errors.AttestationError`.  The simulated backend
(:class:`SimulatedPlatform`, served by :class:`PlatformServer`, reached with
:class:`PlatformClient`) plays the hardware for development and CI: only a process it launched
from its measured code snapshot obtains evidence (:func:`local_evidence`).  Real SGX and TDX
quotes are verified offline with :func:`verify_dcap`, AMD SEV-SNP reports with
:func:`verify_snp`, TPM 2.0 quotes with :func:`verify_tpm`, and Azure confidential VMs (SNP
report, runtime claims, vTPM quote) with :func:`verify_azure_cvm`; a policy's
:class:`ReferenceValues` pin a confidential VM's platform part.  See docs/threat-model.md.
"""

from sealserve.attest._amd import ARK_SPKI_SHA256, SnpAnchors, TcbVersion
from sealserve.attest._azure import AzureCvmAttestation, verify_azure_cvm
from sealserve.attest._claims import VerifiedClaims
from sealserve.attest._client import PlatformClient, RemoteProcess
from sealserve.attest._daemon import PlatformServer
from sealserve.attest._dcap import DcapReport, verify_dcap
from sealserve.attest._entries import ENTRIES
from sealserve.attest._evidence import (
    FORMAT_AZURE_SNP_VTPM,
    FORMAT_LAUNCH,
    FORMAT_SEV_SNP,
    FORMAT_SGX_DCAP,
    FORMAT_SIMULATED,
    FORMAT_TDX_DCAP,
    FORMAT_TPM_QUOTE,
    FORMATS,
    REPORT_DATA_BYTES,
    Evidence,
    report_data_for,
)
from sealserve.attest._gramine_launcher import GramineLauncher
from sealserve.attest._hw_evidence import snp_evidence
from sealserve.attest._launcher import Launcher, MeasuredProcess
from sealserve.attest._local import (
    in_measured_launch,
    launch_config,
    local_evidence,
    local_sealing_key,
    passed_fds,
)
from sealserve.attest._measure import measure
from sealserve.attest._platform import LaunchedProcess, SimulatedPlatform
from sealserve.attest._platform_key import read_platform_public_key
from sealserve.attest._policy import (
    DEFAULT_MAX_EVIDENCE_AGE_S,
    TCB_STATUSES,
    Policy,
    evaluate_policy,
    verified_claims,
    verify_evidence,
)
from sealserve.attest._reference import (
    ReferenceValues,
    SnpReference,
    TdxReference,
    TpmReference,
)
from sealserve.attest._snp import SnpAttestation, SnpReport, verify_snp
from sealserve.attest._tpm import (
    TpmAnchors,
    TpmAttestation,
    TpmQuote,
    TpmSignature,
    tpm_qualifying_data,
    verify_tpm,
)
from sealserve.attest._trust import TrustAnchors

__all__ = [
    "ARK_SPKI_SHA256",
    "AzureCvmAttestation",
    "DEFAULT_MAX_EVIDENCE_AGE_S",
    "DcapReport",
    "ENTRIES",
    "Evidence",
    "FORMATS",
    "FORMAT_AZURE_SNP_VTPM",
    "FORMAT_LAUNCH",
    "FORMAT_SEV_SNP",
    "FORMAT_SGX_DCAP",
    "FORMAT_SIMULATED",
    "FORMAT_TDX_DCAP",
    "FORMAT_TPM_QUOTE",
    "GramineLauncher",
    "LaunchedProcess",
    "Launcher",
    "MeasuredProcess",
    "PlatformClient",
    "PlatformServer",
    "Policy",
    "REPORT_DATA_BYTES",
    "ReferenceValues",
    "RemoteProcess",
    "SimulatedPlatform",
    "SnpAnchors",
    "SnpAttestation",
    "SnpReference",
    "SnpReport",
    "TCB_STATUSES",
    "TcbVersion",
    "TdxReference",
    "TpmAnchors",
    "TpmAttestation",
    "TpmQuote",
    "TpmReference",
    "TpmSignature",
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
    "snp_evidence",
    "tpm_qualifying_data",
    "verified_claims",
    "verify_azure_cvm",
    "verify_dcap",
    "verify_evidence",
    "verify_snp",
    "verify_tpm",
]
