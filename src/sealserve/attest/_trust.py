"""What a verifier trusts to vouch for the hardware (or the simulated platform)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sealserve.attest._amd import SnpAnchors
from sealserve.attest._evidence import FORMAT_SIMULATED, Evidence
from sealserve.attest._tpm import TpmAnchors
from sealserve.errors import ConfigError

__all__ = ["TrustAnchors"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustAnchors:
    """What a verifier trusts to vouch for hardware.

    ``simulated_platform_keys``: raw Ed25519 public keys of simulated platforms (pin the one
    published at ``<data-dir>/tee/platform.pub``, see :meth:`from_data_dir`).  DCAP quotes
    chain to Intel's SGX root CA (built into dcap-qvl), or to ``dcap_root_ca_der`` if set;
    ``accept_dcap=False`` refuses them altogether.

    ``snp``: the AMD roots pinned per product line, and the certificates and CRLs the operator
    cached (:meth:`SnpAnchors.from_cache`); SEV-SNP reports and Azure CVMs chain to it, and
    ``None`` refuses both.  ``tpm``: the roots a TPM attestation key's certificate must chain
    to; ``None`` (the default) refuses bare TPM quotes (an Azure vTPM's key is vouched for by
    its SNP report instead).
    """

    simulated_platform_keys: frozenset[bytes] = frozenset()
    accept_dcap: bool = True
    dcap_root_ca_der: bytes | None = None
    snp: SnpAnchors | None = dataclasses.field(default_factory=SnpAnchors)
    tpm: TpmAnchors | None = None

    def __post_init__(self) -> None:
        keys = frozenset(bytes(k) for k in self.simulated_platform_keys)
        for key in keys:
            if len(key) != 32:
                raise ValueError(
                    f"TrustAnchors 'simulated_platform_keys' has a {len(key)}-byte key. "
                    "Ed25519 public keys are 32 bytes."
                )
        object.__setattr__(self, "simulated_platform_keys", keys)
        if self.snp is not None and not isinstance(self.snp, SnpAnchors):
            raise TypeError(f"TrustAnchors 'snp' must be SnpAnchors, got {type(self.snp)}")
        if self.tpm is not None and not isinstance(self.tpm, TpmAnchors):
            raise TypeError(f"TrustAnchors 'tpm' must be TpmAnchors, got {type(self.tpm)}")

    @classmethod
    def from_data_dir(cls, data_dir: str | Any) -> TrustAnchors:
        """Trust the simulated platform whose public key is in ``<data_dir>/tee/platform.pub``."""
        from sealserve.attest._platform_key import read_platform_public_key

        return cls(simulated_platform_keys=frozenset({read_platform_public_key(data_dir)}))

    def of_own_platform(self, own_evidence: Evidence) -> TrustAnchors:
        """These anchors narrowed to the platform that issued ``own_evidence`` (this process's
        own evidence): the simulated key that signed it, or no simulated key at all when it is
        hardware evidence.

        A verifier whose trust anchors come from its (untrusted) host uses this at start:
        its clients accept it only if its own evidence verifies under the platform they
        trust, so trusting that platform and no other leaves the host no key of its own to
        slip in.  :class:`~sealserve.errors.ConfigError` when the evidence is simulated and
        none of ``simulated_platform_keys`` signed it.
        """
        if own_evidence.format != FORMAT_SIMULATED:
            return dataclasses.replace(self, simulated_platform_keys=frozenset())
        from sealserve.attest._simulated_evidence import verify_simulated

        for key in self.simulated_platform_keys:
            try:
                verify_simulated(own_evidence.raw, (key,))
            except ValueError:
                continue
            return dataclasses.replace(self, simulated_platform_keys=frozenset({key}))
        raise ConfigError(
            "none of the given platform keys signed this process's own evidence: it would "
            "trust a platform other than the one that launched it"
        )
