"""Reference values: the JSON an owner pins per VM image, its errors, and policies carrying it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sealserve.attest import (
    Policy,
    ReferenceValues,
    SnpReference,
    TdxReference,
    TpmReference,
)
from sealserve.attest._certs import Rejected
from sealserve.attest._reference import check_reference_values

MIN_TCB = {"Milan": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}}
DOC = {
    "version": 1,
    "name": "ubuntu-24.04-cvm",
    "snp": {
        "measurements": ["ab" * 48],
        "host_data": None,
        "min_tcb": MIN_TCB,
        "vmpls": [0],
        "allow_migration_agent": False,
        "allow_smt": True,
        "products": ["Milan"],
        "signing_keys": ["vcek"],
        "min_guest_svn": 0,
    },
    "tdx": {"mrtd": ["cd" * 48], "rtmr0": [], "rtmr1": [], "rtmr2": ["ef" * 48]},
    "tpm": {"bank": "sha256", "pcrs": {str(i): ["0" * 63 + str(i)] for i in range(8)}},
}


def test_a_document_round_trips(tmp_path: Path) -> None:
    parsed = ReferenceValues.from_dict(DOC)
    assert parsed.to_dict() == DOC
    assert parsed.sections == {"snp", "tdx", "tpm"}
    path = tmp_path / "image.json"
    path.write_text(json.dumps(DOC))
    assert ReferenceValues.from_file(path) == parsed
    policy = Policy(reference_values=(parsed,))
    assert Policy.from_dict(policy.to_dict()) == policy
    assert policy.to_dict()["reference_values"] == [DOC]
    # A policy without reference values keeps the form grants stored before they existed.
    plain = Policy(measurements=frozenset({"ab" * 32}))
    assert "reference_values" not in plain.to_dict()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"version": 2}, "only 1"),
        ({"extra": 1}, "unknown keys"),
        ({"snp": {"measurements": []}}, "needs 'min_tcb'"),
        ({"snp": {"min_tcb": {}}}, "product line"),
        ({"snp": {"min_tcb": {"Rome": {"snp": 1}}}}, "Product lines"),
        ({"snp": {"min_tcb": {"Milan": {"ucode": 1}}}}, "min_tcb.Milan"),
        ({"snp": {"min_tcb": {"Milan": {"snp": 256}}}}, "0..255"),
        ({"snp": {"min_tcb": MIN_TCB, "measurements": ["ab"]}}, "48 bytes"),
        ({"snp": {"min_tcb": MIN_TCB, "vmpls": [4]}}, "vmpls"),
        ({"snp": {"min_tcb": MIN_TCB, "vmpls": "0"}}, "Not a list"),
        ({"snp": {"min_tcb": MIN_TCB, "allow_smt": "yes"}}, "Not a bool"),
        ({"snp": {"min_tcb": MIN_TCB, "signing_keys": ["ark"]}}, "signing_keys"),
        ({"tdx": {}}, "pins nothing"),
        ({"tdx": {"mrtd": ["zz" * 48]}}, "48 bytes"),
        ({"tpm": {"pcrs": {}}}, "at least one PCR"),
        ({"tpm": {"pcrs": {"24": ["00" * 32]}}}, "0..23"),
        ({"tpm": {"pcrs": {"0": []}}}, "at least one value"),
        ({"tpm": {"pcrs": {"0": ["00" * 48]}}}, "32 bytes"),
        ({"tpm": {"bank": "sha1", "pcrs": {"0": ["00" * 20]}}}, "bank"),
        ({"name": "a b"}, "name"),
    ],
)
def test_bad_documents_name_the_key(change: dict[str, object], needle: str) -> None:
    doc = {"version": 1, **change}
    if not any(k in change for k in ("snp", "tdx", "tpm")):
        doc["tpm"] = DOC["tpm"]
    with pytest.raises(ValueError, match=needle):
        ReferenceValues.from_dict(doc)


def test_empty_documents_and_policies() -> None:
    with pytest.raises(ValueError, match="pin nothing"):
        ReferenceValues()
    snp_only_tcb = ReferenceValues(snp=SnpReference(min_tcb=MIN_TCB))
    assert not snp_only_tcb.pins_code()
    # A policy with neither measurements nor reference values that pin code pins nothing.
    with pytest.raises(ValueError, match="not neither"):
        Policy(reference_values=(snp_only_tcb,))
    Policy(measurements=frozenset({"ab" * 48}), reference_values=(snp_only_tcb,))
    with pytest.raises(ValueError, match="list of ReferenceValues"):
        Policy(measurements=frozenset({"ab" * 48}), reference_values=snp_only_tcb)  # type: ignore[arg-type]


def test_sections_must_fit_the_kind_of_evidence() -> None:
    tpm = ReferenceValues(tpm=TpmReference(pcrs={0: {"00" * 32}}))
    tdx = ReferenceValues(tdx=TdxReference(mrtd=frozenset({"cd" * 48})))
    quoted = {"sha256": {0: bytes(32)}}
    check_reference_values([tpm], fmt="tpm-quote", snp=None, pcrs=quoted, mrtd=None, rtmrs=())
    for fmt in ("sev-snp", "azure-snp-vtpm", "tdx-dcap", "sgx-dcap", "sealserve-sim/1"):
        with pytest.raises(Rejected, match="sections_for"):
            check_reference_values([tpm], fmt=fmt, snp=None, pcrs=quoted, mrtd=None, rtmrs=())
    check_reference_values(
        [tdx], fmt="tdx-dcap", snp=None, pcrs=None, mrtd="cd" * 48, rtmrs=("00" * 48,) * 4
    )
    with pytest.raises(Rejected, match=r"tdx\.mrtd"):
        check_reference_values([tdx], fmt="tdx-dcap", snp=None, pcrs=None, mrtd="00" * 48, rtmrs=())
    rtmr = ReferenceValues(tdx=TdxReference(rtmr1=frozenset({"11" * 48})))
    with pytest.raises(Rejected, match=r"tdx\.rtmr1"):
        check_reference_values(
            [rtmr], fmt="tdx-dcap", snp=None, pcrs=None, mrtd="00" * 48, rtmrs=("00" * 48,) * 4
        )
    # One of several documents suffices.
    check_reference_values([tdx, tpm], fmt="tpm-quote", snp=None, pcrs=quoted, mrtd=None, rtmrs=())
