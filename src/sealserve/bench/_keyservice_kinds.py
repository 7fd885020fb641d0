"""Evidence of each kind for ``sealserve bench keyservice``: simulated, SEV-SNP, TPM, Azure CVM.

No machine here has a TEE, so the hardware kinds are synthetic (:mod:`sealserve.attest._synthetic`:
a test AMD hierarchy, a test TPM CA), in the real layouts and signed with the real algorithms;
the KeyService under test is launched with measured trust in exactly those roots.  What the
verifier does is what it does on hardware evidence: the chain (RSA-PSS SHA-384 for AMD), the
report's ECDSA P-384 signature, the TPM quote's RSA signature and PCR digest, the Azure chain.
AMD's ARKs and ASKs are RSA-4096 and these are RSA-2048, so the SEV-SNP chain verifies a little
faster here than AMD's would (a public-key RSA operation grows about with the square of the
modulus; it is a small part of a verification, see ``verify_us``).

:func:`measure_verification` times the KeyService's evidence verifier (the class the service
uses) on fresh evidence of each kind, in this process, interleaved, in CPU time.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from sealserve.attest import (
    Evidence,
    Policy,
    ReferenceValues,
    SnpReference,
    TpmReference,
    TrustAnchors,
    report_data_for,
)
from sealserve.attest._hw_evidence import AzureBundle, parse_hw_evidence
from sealserve.attest._snp_cache import fill_cache
from sealserve.attest._synthetic import SyntheticAmd, SyntheticTpm, azure_evidence
from sealserve.attest._tpm import tpm_qualifying_data
from sealserve.attest.tee import SimulatedPlatform

__all__ = ["KINDS", "HardwareKinds", "measure_verification"]

#: The evidence kinds, the simulated one (the baseline) first.
KINDS: Final = ("simulated", "sev-snp", "tpm-quote", "azure-snp-vtpm")
_TCB: Final = {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
_CHIP: Final = bytes(range(64))
_PCRS: Final = {"sha256": {i: hashlib.sha256(b"bench pcr %d" % i).digest() for i in range(24)}}
_BOOT_PCRS: Final = range(8)


class HardwareKinds:
    """The synthetic hardware, the KeyService settings that trust it, and evidence per kind."""

    def __init__(self, root: Path, platform: SimulatedPlatform) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding

        self.platform = platform
        self.amd = SyntheticAmd("Milan")
        self.tpm = SyntheticTpm(scheme="rsassa")
        self._vcek_key, self._vcek = self.amd.leaf(tcb=_TCB, chip_id=_CHIP)
        root.mkdir(parents=True, exist_ok=True)
        downloads = root / "kds"
        downloads.mkdir(exist_ok=True)
        (downloads / "cert_chain").write_bytes(
            self.amd.ask.public_bytes(Encoding.PEM) + self.amd.ark.public_bytes(Encoding.PEM)
        )
        (downloads / "vcek.der").write_bytes(self.amd.der(self._vcek))
        self.snp_cache = root / "snp-cache"
        fill_cache(downloads, self.snp_cache, ark_pins={"Milan": self.amd.ark_pin})
        self.tpm_roots = root / "tpm-roots.pem"
        self.tpm_roots.write_bytes(self.tpm.ca.public_bytes(Encoding.PEM))
        # An Azure CVM's HCL report is made once at boot; each release quotes the vTPM.
        template, self._hcl, vcek = azure_evidence(
            self.amd, self.tpm, report_data=bytes(64), pcrs=_PCRS, tcb=_TCB, chip_id=_CHIP
        )
        self._azure_certs = (self.amd.der(vcek),)
        del template

    def settings_changes(self) -> dict[str, Any]:
        """The KeyService settings that trust this hardware (measured: clients pin them)."""
        return {
            "snp_ark_pins": f"Milan={self.amd.ark_pin}",
            "snp_cache": self.snp_cache,
            "tpm_roots": self.tpm_roots,
        }

    def trust(self) -> TrustAnchors:
        """What that KeyService trusts, for an in-process verifier."""
        from sealserve.attest import SnpAnchors

        return TrustAnchors(
            simulated_platform_keys=self.platform.trust_anchors().simulated_platform_keys,
            snp=SnpAnchors.from_cache(self.snp_cache, ark_pins={"Milan": self.amd.ark_pin}),
            tpm=self.tpm.anchors(),
        )

    def policy(self, kind: str) -> Policy:
        """The runtime policy a grant names for evidence of ``kind``."""
        snp = SnpReference(min_tcb={"Milan": _TCB}, measurements=frozenset({"00" * 48}))
        tpm = TpmReference(pcrs={i: frozenset({_PCRS["sha256"][i].hex()}) for i in _BOOT_PCRS})
        if kind == "simulated":
            return Policy(measurements=frozenset({self.platform.measurement("attest-probe")}))
        if kind == "sev-snp":
            return Policy(reference_values=(ReferenceValues(name="bench-snp", snp=snp),))
        if kind == "tpm-quote":
            return Policy(reference_values=(ReferenceValues(name="bench-tpm", tpm=tpm),))
        if kind == "azure-snp-vtpm":
            return Policy(reference_values=(ReferenceValues(name="bench-az", snp=snp, tpm=tpm),))
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def maker(self, kind: str) -> Callable[[bytes], Evidence]:
        """Fresh evidence of ``kind`` binding a report_data (what a runtime obtains)."""
        if kind == "simulated":
            return lambda rd: self.platform.issue_unlaunched_evidence("attest-probe", rd)
        if kind == "sev-snp":
            return self._snp
        if kind == "tpm-quote":
            return lambda rd: self.tpm.evidence(report_data=rd, pcrs=_PCRS)
        if kind == "azure-snp-vtpm":
            return self._azure
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def _snp(self, report_data: bytes) -> Evidence:
        report = self.amd.report(self._vcek_key, tcb=_TCB, chip_id=_CHIP, report_data=report_data)
        return self.amd.snp_evidence(report, self._vcek)

    def _azure(self, report_data: bytes) -> Evidence:
        attest, signature = self.tpm.quote(nonce=tpm_qualifying_data(report_data), pcrs=_PCRS)
        bundle = AzureBundle(
            hcl_report=self._hcl,
            attest=attest,
            signature=signature,
            report_data=report_data,
            pcrs=_PCRS,
            certificates=self._azure_certs,
        )
        return parse_hw_evidence("azure-snp-vtpm", bundle.to_raw(), None)


def measure_verification(
    kinds: HardwareKinds, *, count: int = 200, rounds: int = 3
) -> dict[str, dict[str, float]]:
    """``{kind: {"verify_us", "evidence_us"}}``: CPU per verification by the KeyService's
    verifier (including the wire parse), and per evidence made, medians over interleaved
    rounds of ``count`` each."""
    from sealserve.bench._common import median
    from sealserve.keyservice import EvidenceVerifier

    verifier = EvidenceVerifier(trust=kinds.trust())
    verify: dict[str, list[float]] = {k: [] for k in KINDS}
    make: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            maker = kinds.maker(kind)
            items = []
            started = time.thread_time()
            for _ in range(count):
                key, nonce = os.urandom(32), os.urandom(41)
                items.append((maker(report_data_for(key, nonce)).to_bytes(), key, nonce))
            make[kind].append((time.thread_time() - started) / count * 1e6)
            started = time.thread_time()
            for wire_evidence, key, nonce in items:
                if verifier.verify(wire_evidence, bound_key=key, nonce=nonce) is None:
                    raise RuntimeError(f"{kind} evidence did not verify")
            verify[kind].append((time.thread_time() - started) / count * 1e6)
    return {
        kind: {"verify_us": median(verify[kind]), "evidence_us": median(make[kind])}
        for kind in KINDS
    }
