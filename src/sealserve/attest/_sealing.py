"""Sealing keys: secrets a measured process can recover after a restart, and nobody else.

A sealing key is what SGX's ``EGETKEY`` gives an enclave: 32 bytes derived from a secret of the
platform that the host cannot read, and from the measurement of the code that asks, so the
same code on the same platform always gets the same key and other code (or the same code on
another platform) never does.  sealserve asks for one by *purpose* (``"keyservice/master-key"``),
and each backend provides the root it derives from:

=============  =============================================================================
backend        root of the sealing key
=============  =============================================================================
simulated      ``<data-dir>/tee/sealing.key`` (32 random bytes, 0600), held by the platform
               daemon; the key reaches the launched process on its private channel
gramine        Gramine's ``/dev/attestation/keys/_sgx_mrenclave`` (EGETKEY, MRENCLAVE policy),
               read inside the enclave itself
tsm (SNP)      ``SNP_GET_DERIVED_KEY`` on ``/dev/sev-guest`` (VCEK root, mixing the guest
               policy and the launch measurement), in the platform daemon
tpm, azure-cvm a 32-byte secret the TPM seals to the boot PCRs (``tpm2_create`` with a PCR
               policy; ``tpm2_unseal`` only succeeds in the same boot state), in the daemon
tsm (TDX)      none in hardware: what must survive comes from a peer that verified the TD's
               quote (a KeyService joins a running one: ``sealserve.keyservice._replicas``)
=============  =============================================================================

Whatever the root, the key a process gets is :func:`derive_sealing_key` of it with that
process's sealserve measurement and the purpose.  See docs/threat-model.md ("Sealing").
"""

from __future__ import annotations

import re
from typing import Final

from sealserve.crypto._keys import derive_key

__all__ = ["SEALING_KEY_BYTES", "check_purpose", "derive_sealing_key"]

SEALING_KEY_BYTES: Final = 32
_PURPOSE: Final = re.compile(r"[a-z0-9][a-z0-9/._-]{0,127}")
_MEASUREMENT: Final = re.compile(r"[0-9a-f]{64}|[0-9a-f]{96}")


def check_purpose(purpose: object) -> str:
    """``purpose`` if it names a sealing key (lowercase, ``/._-``, at most 128 characters)."""
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise ValueError(
            f"purpose must be 1 to 128 characters of a-z, 0-9 and '/._-', got {purpose!r}"
        )
    return purpose


def derive_sealing_key(root: bytes, *, measurement: str, purpose: str, debug: bool) -> bytes:
    """The sealing key of code measuring ``measurement`` (hex) for ``purpose``, from ``root``.

    HKDF-SHA256 with an info that binds all three, so another measurement, another purpose or a
    debug launch (whose memory a debugger may read: SGX mixes the DEBUG attribute into its
    sealing keys for the same reason) never derives the same key, and the key reveals nothing
    of ``root``.
    """
    root = bytes(root)
    if len(root) < SEALING_KEY_BYTES:
        raise ValueError(f"a sealing root has at least {SEALING_KEY_BYTES} bytes, got {len(root)}")
    if not isinstance(measurement, str) or not _MEASUREMENT.fullmatch(measurement):
        raise ValueError(
            f"measurement must be 32 or 48 bytes of lowercase hex, got {measurement!r}"
        )
    return derive_key(
        root,
        salt=None,
        label="sealserve/sealing-key",
        measurement=measurement,
        purpose=check_purpose(purpose),
        debug=int(bool(debug)),
    )
