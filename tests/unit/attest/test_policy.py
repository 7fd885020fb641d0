from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from sealserve.attest import (
    FORMAT_SGX_DCAP,
    Evidence,
    Policy,
    TrustAnchors,
    VerifiedClaims,
    evaluate_policy,
)
from sealserve.crypto import Identity
from sealserve.errors import AttestationError, ConfigError

M1 = "11" * 32
M2 = "22" * 32
SIGNER = "ab" * 32
RD = bytes(range(64))

CLAIMS = VerifiedClaims(
    format="sgx-dcap",
    measurement=M1,
    debug=False,
    tcb_status="UpToDate",
    advisories=(),
    report_data=RD,
    signer=SIGNER,
    product_id=7,
    svn=3,
)


def _accepts(policy: Policy, claims: VerifiedClaims = CLAIMS, report_data: bytes = RD) -> bool:
    try:
        evaluate_policy(claims, policy, report_data=report_data)
    except AttestationError as exc:
        if str(exc) != AttestationError.MESSAGE:
            raise AssertionError(f"not the fixed message: {exc}") from exc
        return False
    return True


def test_measurement_pinning() -> None:
    assert _accepts(Policy(measurements=frozenset({M1, M2})))
    assert not _accepts(Policy(measurements=frozenset({M2})))


def test_signer_product_and_minimum_svn() -> None:
    assert _accepts(Policy(signer=SIGNER, product_id=7, min_svn=3))
    assert not _accepts(Policy(signer=SIGNER, product_id=7, min_svn=4))
    assert not _accepts(Policy(signer=SIGNER, product_id=8))
    assert not _accepts(Policy(signer="cd" * 32, product_id=7))
    no_signer = dataclasses.replace(CLAIMS, signer=None, product_id=None, svn=None)
    assert not _accepts(Policy(signer=SIGNER, product_id=7), no_signer)


def test_debug_is_refused_unless_allowed() -> None:
    debug = dataclasses.replace(CLAIMS, debug=True)
    assert not _accepts(Policy(measurements=frozenset({M1})), debug)
    assert _accepts(Policy(measurements=frozenset({M1}), allow_debug=True), debug)


def test_tcb_status_must_be_accepted() -> None:
    stale = dataclasses.replace(CLAIMS, tcb_status="OutOfDate")
    assert not _accepts(Policy(measurements=frozenset({M1})), stale)
    lenient = Policy(
        measurements=frozenset({M1}), tcb_statuses=frozenset({"UpToDate", "OutOfDate"})
    )
    assert _accepts(lenient, stale)


def test_advisories_must_be_allowed_when_listed() -> None:
    affected = dataclasses.replace(
        CLAIMS, tcb_status="SWHardeningNeeded", advisories=("INTEL-SA-00615",)
    )
    statuses = frozenset({"SWHardeningNeeded"})
    assert _accepts(Policy(measurements=frozenset({M1}), tcb_statuses=statuses), affected)
    assert _accepts(
        Policy(
            measurements=frozenset({M1}),
            tcb_statuses=statuses,
            allowed_advisories=frozenset({"INTEL-SA-00615"}),
        ),
        affected,
    )
    assert not _accepts(
        Policy(measurements=frozenset({M1}), tcb_statuses=statuses, allowed_advisories=frozenset()),
        affected,
    )


def test_report_data_must_match() -> None:
    assert not _accepts(Policy(measurements=frozenset({M1})), report_data=bytes(64))


def test_round_trip_through_json() -> None:
    for policy in [
        Policy(measurements=frozenset({M1, M2.upper()})),
        Policy(
            signer=SIGNER,
            product_id=0,
            min_svn=2,
            allow_debug=True,
            tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded"}),
            allowed_advisories=frozenset({"INTEL-SA-00289"}),
        ),
    ]:
        doc = json.loads(json.dumps(policy.to_dict()))
        assert Policy.from_dict(doc) == policy
    assert Policy(measurements=frozenset({M2.upper()})).measurements == {M2}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "either 'measurements' or 'signer'"),
        ({"measurements": frozenset({M1}), "signer": SIGNER, "product_id": 1}, "not both"),
        ({"measurements": frozenset({"abc"})}, "'measurements' has value 'abc'"),
        ({"measurements": frozenset({"zz" * 32})}, "lowercase hex"),
        ({"signer": "ab", "product_id": 1}, "'signer' has value 'ab'"),
        ({"signer": SIGNER}, "'product_id' has value None"),
        ({"signer": SIGNER, "product_id": 70000}, "'product_id' has value 70000"),
        ({"measurements": frozenset({M1}), "min_svn": -1}, "'min_svn' has value -1"),
        ({"measurements": frozenset({M1}), "tcb_statuses": frozenset({"Revoked"})}, "Revoked"),
        ({"measurements": frozenset({M1}), "tcb_statuses": frozenset()}, "non-empty"),
        ({"measurements": frozenset({M1}), "allow_debug": "yes"}, "'allow_debug' has value"),
        ({"measurements": "11" * 32}, "Not a list of strings"),
    ],
)
def test_invalid_policies_name_the_key_and_value(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Policy(**kwargs)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"measurements": [M1], "colour": "red"}, "unknown keys \\['colour'\\]"),
        ({"measurements": [M1], "version": 2}, "'version' has value 2"),
        ({"signer": SIGNER, "product_id": "7"}, "'product_id' has value '7'"),
        ([M1], "JSON object"),
    ],
)
def test_from_dict_errors(doc: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Policy.from_dict(doc)


def test_trust_anchors_validate_keys() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TrustAnchors(simulated_platform_keys=frozenset({b"short"}))
    anchors = TrustAnchors(simulated_platform_keys=frozenset({bytes(32)}))
    assert anchors.simulated_platform_keys == {bytes(32)}


def _own_evidence(platform: Identity) -> Evidence:
    from sealserve.attest._simulated_evidence import sign_simulated

    return sign_simulated(
        platform,
        measurement=bytes(32),
        report_data=bytes(64),
        debug=False,
        tcb_status="UpToDate",
        entry="keyservice",
        issued_at=1_700_000_000,
    )


def test_trust_narrows_to_the_platform_that_signed_own_evidence() -> None:
    launcher, other = Identity.generate(), Identity.generate()
    given = TrustAnchors(
        simulated_platform_keys=frozenset({launcher.public_key_bytes, other.public_key_bytes})
    )
    narrowed = given.of_own_platform(_own_evidence(launcher))
    assert narrowed.simulated_platform_keys == {launcher.public_key_bytes}
    assert narrowed.accept_dcap is given.accept_dcap


def test_a_host_chosen_platform_key_is_refused() -> None:
    launcher, hosts_own = Identity.generate(), Identity.generate()
    given = TrustAnchors(simulated_platform_keys=frozenset({hosts_own.public_key_bytes}))
    with pytest.raises(ConfigError, match="other than the one that launched it"):
        given.of_own_platform(_own_evidence(launcher))


def test_hardware_evidence_drops_every_simulated_key() -> None:
    given = TrustAnchors(simulated_platform_keys=frozenset({Identity.generate().public_key_bytes}))
    hardware = dataclasses.replace(_own_evidence(Identity.generate()), format=FORMAT_SGX_DCAP)
    assert given.of_own_platform(hardware).simulated_platform_keys == frozenset()
