"""Any change to a signed release response is refused by the runtime side: it never yields keys
other than the ones the KeyService released."""

from __future__ import annotations

import hashlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealserve.crypto import HpkeKeyPair, HpkeSuite, Identity, SymmetricKey
from sealserve.errors import KeyServiceError
from sealserve.keyservice import Vault
from sealserve.keyservice._metrics import Metrics
from sealserve.keyservice._releaser import Releaser, ReleaseRequest
from sealserve.keyservice._store import PairRecords
from sealserve.protocol import AttestedKeyService, ReleaseSession, join_model_id, wire
from tests.unit.keyservice.fakes import GOOD, FakeJudge, fake_evidence, fake_report_data

_KS = Identity.generate()
_HPKE = HpkeKeyPair.generate()
_VAULT = Vault(SymmetricKey.generate())
_MID, _UID = join_model_id("a" * 64, "m"), "b" * 64
_MODEL_KEY, _REQUEST_KEY = SymmetricKey.generate().to_bytes(), SymmetricKey.generate().to_bytes()


def _release() -> tuple[ReleaseSession, bytes, bytes]:
    judge = FakeJudge()
    ks_id = wire.fingerprint(
        wire.keyservice_binding(_HPKE.public_key_bytes(), _KS.public_key_bytes)
    )
    releaser = Releaser(
        vault=_VAULT, verifier=judge, identity=_KS, metrics=Metrics(), keyservice_id=ks_id,
        release_ttl_s=300.0, revocation_check_s=10.0,
        session_keys=lambda key_id: hashlib.sha256(key_id.encode()).digest(),
    )  # fmt: skip
    session = ReleaseSession(
        keyservice=AttestedKeyService(
            keyservice_id=ks_id,
            hpke_public_key=_HPKE.public_key_bytes(),
            hpke_suite=HpkeSuite.X25519_SHA256_AES256GCM,
            signing_public_key=_KS.public_key_bytes,
            measurement="",
        )
    )
    nonce = b"n" * 32
    evidence = fake_evidence(GOOD, fake_report_data(session.public_key, nonce))
    request = ReleaseRequest(
        nonce, evidence, session.public_key, ((_UID, _MID),), HpkeSuite.X25519_SHA256_AES256GCM
    )
    policy = wire.canonical_json({"measurements": [GOOD]})
    record = PairRecords(
        model_id=_MID,
        user_id=_UID,
        grant=_VAULT.seal("grant", {"model_id": _MID, "user_id": _UID}, policy),
        model_key_version=3,
        model_key=_VAULT.seal("model-key", {"model_id": _MID, "version": "3"}, _MODEL_KEY),
        request_key_version=1,
        request_key=_VAULT.seal(
            "request-key",
            {"model_id": _MID, "user_id": _UID},
            wire.canonical_json(
                {"key": wire.b64encode(_REQUEST_KEY), "policy": {"measurements": [GOOD]}}
            ),
        ),
    )
    verified = judge.verify(evidence, bound_key=session.public_key, nonce=nonce)
    assert verified is not None
    body, _ = releaser.decide(request, verified, 7, [record])
    return session, body.to_json(), nonce


_SESSION, _BODY, _NONCE = _release()


def test_the_genuine_response_opens() -> None:
    release = _SESSION.open(_BODY, nonce=_NONCE)
    keys = release.keys[(_UID, _MID)]
    assert keys.model_key.to_bytes() == _MODEL_KEY
    assert keys.request_key.to_bytes() == _REQUEST_KEY
    assert (keys.model_key_version, release.revocation_epoch) == (3, 7)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(position=st.integers(min_value=0, max_value=len(_BODY) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    mutated = bytearray(_BODY)
    mutated[position] ^= 1 << bit
    try:
        release = _SESSION.open(bytes(mutated), nonce=_NONCE)
    except KeyServiceError:
        return
    # the only acceptable success: a change JSON reads as the same document
    assert json.loads(bytes(mutated)) == json.loads(_BODY)
    assert release.keys[(_UID, _MID)].model_key.to_bytes() == _MODEL_KEY


@settings(max_examples=50, deadline=None)
@given(nonce=st.binary(min_size=16, max_size=64).filter(lambda n: n != _NONCE))
def test_another_nonce_is_refused(nonce: bytes) -> None:
    try:
        _SESSION.open(_BODY, nonce=nonce)
    except KeyServiceError:
        return
    raise AssertionError("a release opened for a nonce it was not made for")
