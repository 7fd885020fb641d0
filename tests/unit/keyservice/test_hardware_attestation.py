"""Clients verify a KeyService attested by SEV-SNP, TPM or Azure-CVM evidence, and the
KeyService's evidence verifier judges runtimes' evidence of those kinds.

The hardware is synthetic (its roots generated here and trusted explicitly); the attestation
response is built as the service builds it, binding its two public keys and the nonce."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import pytest

from sealserve._clock import ManualClock
from sealserve.attest import (
    Evidence,
    Policy,
    ReferenceValues,
    SnpReference,
    TpmReference,
    TrustAnchors,
    report_data_for,
)
from sealserve.attest._synthetic import SyntheticAmd, SyntheticTpm, azure_evidence
from sealserve.crypto import HpkeKeyPair, Identity
from sealserve.errors import AttestationError
from sealserve.keyservice import EvidenceVerifier
from sealserve.protocol import attestation_nonce, verify_keyservice, wire

NOW = 1_750_000_000
TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
PCRS = {"sha256": {i: hashlib.sha256(b"ks %d" % i).digest() for i in range(8)}}
SNP = ReferenceValues(snp=SnpReference(min_tcb={"Milan": TCB}, measurements={"ab" * 48}))
TPM = ReferenceValues(tpm=TpmReference(pcrs={i: {PCRS["sha256"][i].hex()} for i in range(8)}))
AZURE = ReferenceValues(snp=SnpReference(min_tcb={"Milan": TCB}), tpm=TPM.tpm)


@pytest.fixture(scope="module")
def amd() -> SyntheticAmd:
    return SyntheticAmd("Milan")


@pytest.fixture(scope="module")
def tpm() -> SyntheticTpm:
    return SyntheticTpm(scheme="rsapss")


def _makers(amd: SyntheticAmd, tpm: SyntheticTpm) -> dict[str, Callable[[bytes], Evidence]]:
    key, vcek = amd.leaf(tcb=TCB, chip_id=bytes(64))

    def snp(report_data: bytes) -> Evidence:
        report = amd.report(key, tcb=TCB, report_data=report_data, measurement=b"\xab" * 48)
        return amd.snp_evidence(report, vcek)

    def quote(report_data: bytes) -> Evidence:
        return tpm.evidence(report_data=report_data, pcrs=PCRS)

    def azure(report_data: bytes) -> Evidence:
        return azure_evidence(amd, tpm, report_data=report_data, pcrs=PCRS, tcb=TCB)[0]

    return {"snp": snp, "tpm": quote, "azure": azure}


def _attestation(evidence_for: Callable[[bytes], Evidence], nonce: bytes) -> bytes:
    hpke, signing = HpkeKeyPair.generate(), Identity.generate()
    binding = wire.keyservice_binding(hpke.public_key_bytes(), signing.public_key_bytes)
    evidence = evidence_for(report_data_for(binding, nonce))
    return json.dumps(
        {
            "evidence": wire.b64encode(evidence.to_bytes()),
            "hpke_public_key": wire.b64encode(hpke.public_key_bytes()),
            "hpke_suite": hpke.suite.name,
            "signing_public_key": wire.b64encode(signing.public_key_bytes),
            "keyservice_id": wire.fingerprint(binding),
        }
    ).encode()


@pytest.mark.parametrize(("kind", "refs"), [("snp", SNP), ("tpm", TPM), ("azure", AZURE)])
def test_clients_verify_a_hardware_attested_keyservice(
    amd: SyntheticAmd, tpm: SyntheticTpm, kind: str, refs: ReferenceValues
) -> None:
    make = _makers(amd, tpm)[kind]
    trust = TrustAnchors(snp=amd.anchors(), tpm=tpm.anchors())
    policy = Policy(reference_values=(refs,))
    nonce = attestation_nonce()
    body = _attestation(make, nonce)
    attested = verify_keyservice(body, nonce=nonce, policy=policy, trust=trust, now=NOW)
    assert len(attested.keyservice_id) == 64
    # Another nonce than the client's, or a client that does not trust that hardware.
    with pytest.raises(AttestationError):
        verify_keyservice(body, nonce=attestation_nonce(), policy=policy, trust=trust, now=NOW)
    with pytest.raises(AttestationError):
        verify_keyservice(body, nonce=nonce, policy=policy, trust=TrustAnchors(), now=NOW)


def test_the_evidence_verifier_judges_hardware_evidence(
    amd: SyntheticAmd, tpm: SyntheticTpm
) -> None:
    verifier = EvidenceVerifier(
        trust=TrustAnchors(snp=amd.anchors(), tpm=tpm.anchors()), clock=ManualClock(start=NOW)
    )
    runtime_key, nonce = HpkeKeyPair.generate().public_key_bytes(), os.urandom(41)
    policies = {
        "snp": Policy(reference_values=(SNP,)),
        "tpm": Policy(reference_values=(TPM,)),
        "azure": Policy(reference_values=(AZURE,)),
    }
    for kind, make in _makers(amd, tpm).items():
        wire_evidence = make(report_data_for(runtime_key, nonce)).to_bytes()
        verified = verifier.verify(wire_evidence, bound_key=runtime_key, nonce=nonce)
        assert verified is not None
        for other, policy in policies.items():
            assert verifier.accepts(verified, policy) == (other == kind)
        # Bound to another key or nonce: not verified at all.
        other_key = HpkeKeyPair.generate().public_key_bytes()
        assert verifier.verify(wire_evidence, bound_key=other_key, nonce=nonce) is None
        assert verifier.verify(wire_evidence, bound_key=runtime_key, nonce=os.urandom(41)) is None
    # A policy round-trips through the store's dict form with its reference values.
    for policy in policies.values():
        assert verifier.parse_policy(verifier.policy_dict(policy)) == policy
