"""The ``tpm`` and ``azure-cvm`` launcher backends: a TPM quote over the launch PCR.

``tpm``: the launcher resets the launch PCR (23 by default: the TCG PC Client "application
support" PCR, which neither firmware, boot loaders, systemd nor IMA use, and which is
resettable at locality 0, so each start of the launcher begins its log from zeros), extends it
with every entry it launches, and answers evidence requests with a quote by the operator's
attestation key over the boot PCRs and the launch PCR, the qualifying data being the SHA-256
of the 64-byte report_data.  The AK's certificate chain travels with the quote.

``azure-cvm``: the same on an Azure confidential VM's vTPM, with Azure's HCL attestation key
(persistent handle ``0x81000003``) and the HCL report read from NV index ``0x01400001`` after
the report_data was written to ``0x01400002`` (the paravisor then puts it in the report's
runtime claims, whose hash is the SEV-SNP report's report_data, and the claims carry the HCL
AK's public key): AMD root -> VCEK -> SNP report -> runtime claims -> AK -> quote.

The sealing root is :meth:`~sealserve.attest._tpm_device.TpmDevice.sealing_root` (bound to
this TPM and the boot PCRs).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sealserve._log import get_logger
from sealserve.attest._certs import Rejected
from sealserve.attest._evidence import (
    FORMAT_AZURE_SNP_VTPM,
    FORMAT_TPM_QUOTE,
    REPORT_DATA_BYTES,
    Evidence,
)
from sealserve.attest._hw_evidence import AzureBundle, TpmBundle, parse_hw_evidence
from sealserve.attest._launch_log import LaunchEvent
from sealserve.attest._tpm_device import (
    AZURE_AK_HANDLE,
    AZURE_HCL_REPORT_NV,
    AZURE_REPORT_DATA_NV,
    TpmDevice,
)
from sealserve.config import AttestSettings
from sealserve.errors import TeeError

__all__ = ["TpmBackend"]

_log = get_logger(__name__)


class TpmBackend:
    """A TPM (or an Azure vTPM) as the measured launcher's hardware."""

    def __init__(
        self,
        device: TpmDevice,
        *,
        ak: str,
        ak_chain: tuple[bytes, ...] = (),
        scheme: str = "rsassa",
        launch_pcr: int = 23,
        boot_pcrs: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7),
        azure: bool = False,
    ) -> None:
        if not ak:
            raise TeeError(
                "no attestation key: set attest.tpm_ak to the AK's persistent handle or saved "
                "context (Azure confidential VMs: 0x81000003)"
            )
        if launch_pcr in boot_pcrs:
            raise ValueError(f"launch_pcr {launch_pcr} must not be one of boot_pcrs")
        self._device = device
        self._ak = ak
        self._chain = ak_chain
        self._scheme = scheme
        self._pcr = launch_pcr
        self._boot = boot_pcrs
        self._azure = azure
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: AttestSettings, *, azure: bool) -> TpmBackend:
        chain: tuple[bytes, ...] = ()
        if settings.tpm_ak_chain:
            try:
                pem = Path(settings.tpm_ak_chain).read_bytes()
                chain = tuple(
                    c.public_bytes(serialization.Encoding.DER)
                    for c in x509.load_pem_x509_certificates(pem)
                )
            except (OSError, ValueError) as exc:
                raise TeeError(f"cannot read attest.tpm_ak_chain: {exc}") from exc
        return cls(
            TpmDevice(tcti=settings.tpm_tcti, boot_pcrs=settings.tpm_boot_pcrs),
            ak=settings.tpm_ak or (AZURE_AK_HANDLE if azure else ""),
            ak_chain=chain,
            scheme=settings.tpm_ak_scheme,
            launch_pcr=settings.tpm_launch_pcr,
            boot_pcrs=settings.tpm_boot_pcrs,
            azure=azure,
        )

    @property
    def name(self) -> str:
        return "azure-cvm" if self._azure else "tpm"

    @property
    def register(self) -> str:
        return f"pcr.sha256.{self._pcr}"

    @property
    def device(self) -> TpmDevice:
        return self._device

    def open(self) -> list[LaunchEvent]:
        self._device.check_tools()
        self._device.reset_pcr(self._pcr)
        if self._device.read_pcrs([self._pcr])[self._pcr] != bytes(32):
            raise TeeError(f"PCR {self._pcr} did not reset: it is not resettable on this TPM")
        _log.event("launcher.pcr_reset", pcr=self._pcr, backend=self.name)
        return []

    def extend(self, event: LaunchEvent) -> None:
        with self._lock:
            self._device.extend(self._pcr, event.digest("sha256"))

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes")
        with self._lock:
            hcl = self._hcl_report(report_data) if self._azure else None
            pcrs = (*self._boot, self._pcr)
            attest, signature, values = self._device.quote(
                ak=self._ak,
                qualifying_data=hashlib.sha256(report_data).digest(),
                pcrs=pcrs,
                scheme=self._scheme,
            )
        ordered = sorted(pcrs)
        if len(values) != 32 * len(ordered):
            raise TeeError(f"tpm2_quote returned {len(values)} bytes of PCR values")
        pcr_map = {"sha256": {i: values[32 * n : 32 * (n + 1)] for n, i in enumerate(ordered)}}
        # Azure: the HCL report's certificates (the VCEK) come from the operator's cache.
        return _bundle_evidence(
            attest=attest,
            signature=signature,
            report_data=report_data,
            pcrs=pcr_map,
            ak_chain=self._chain,
            hcl_report=hcl,
        )

    def sealing_root(self) -> bytes:
        with self._lock:
            return self._device.sealing_root()

    def close(self) -> None:
        return None

    def _hcl_report(self, report_data: bytes) -> bytes:
        """A fresh HCL report whose runtime claims carry ``report_data`` (Azure)."""
        self._device.nv_write(AZURE_REPORT_DATA_NV, report_data)
        return self._device.nv_read(AZURE_HCL_REPORT_NV)


def _bundle_evidence(
    *,
    attest: bytes,
    signature: bytes,
    report_data: bytes,
    pcrs: dict[str, dict[int, bytes]],
    ak_chain: tuple[bytes, ...],
    hcl_report: bytes | None,
) -> Evidence:
    """The quote (and for Azure the HCL report) as ``tpm-quote`` / ``azure-snp-vtpm``
    evidence, parsed back as any verifier will (so a malformed answer fails here)."""
    if hcl_report is None:
        raw = TpmBundle(
            attest=attest,
            signature=signature,
            report_data=report_data,
            pcrs=pcrs,
            ak_chain=ak_chain,
        ).to_raw()
        fmt = FORMAT_TPM_QUOTE
    else:
        raw = AzureBundle(
            hcl_report=hcl_report,
            attest=attest,
            signature=signature,
            report_data=report_data,
            pcrs=pcrs,
            certificates=ak_chain,
        ).to_raw()
        fmt = FORMAT_AZURE_SNP_VTPM
    try:
        return parse_hw_evidence(fmt, raw, None)
    except Rejected as exc:
        raise TeeError(f"the TPM answered with evidence that does not parse: {exc}") from exc
