"""Attestation: evidence, policies and their verification, DCAP, SNP, TPM and Azure quotes.

A verifier (the KeyService, a client) checks :class:`Evidence` with :func:`verify_evidence`
against a :class:`Policy` and its :class:`TrustAnchors`; every failure is the one fixed
:class:`~sealserve.errors.AttestationError`.  Real SGX and TDX quotes are verified offline
with :func:`verify_dcap`, AMD SEV-SNP reports with :func:`verify_snp`, TPM 2.0 quotes with
:func:`verify_tpm`, and Azure confidential VMs (SNP report, runtime claims, vTPM quote) with
:func:`verify_azure_cvm`; a policy's :class:`ReferenceValues` pin a confidential VM's
platform part.  A process launched measured obtains its evidence with
:func:`local_evidence`.  The side that launches processes and issues evidence (the simulated
TEE, its daemon, the launchers) is :mod:`sealserve.attest.tee`, which a verifier does not
load.  See docs/threat-model.md.
"""

from sealserve.attest._amd import ARK_SPKI_SHA256, SnpAnchors, TcbVersion
from sealserve.attest._azure import AzureCvmAttestation, verify_azure_cvm
from sealserve.attest._claims import VerifiedClaims
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
from sealserve.attest._local import (
    in_measured_launch,
    launch_config,
    local_evidence,
    local_sealing_key,
    passed_fds,
)
from sealserve.attest._measure import measure
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
    "Policy",
    "REPORT_DATA_BYTES",
    "ReferenceValues",
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
    "tpm_qualifying_data",
    "verified_claims",
    "verify_azure_cvm",
    "verify_dcap",
    "verify_evidence",
    "verify_snp",
    "verify_tpm",
]
