"""Owner, user and a simulated runtime through the client classes, on each backend."""

from __future__ import annotations

import pytest

from sealserve.attest import Policy
from sealserve.client import Owner, User
from sealserve.crypto import Identity, RequestKey, SymmetricKey
from sealserve.errors import AccessDenied, NotFound
from tests.integration.keyservice.conftest import KeyServiceProcess
from tests.integration.keyservice.simruntime import SimulatedRuntime, probe_measurement


def principals(ks: KeyServiceProcess) -> tuple[Owner, User]:
    owner = Owner(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    user = User(Identity.generate(), keyservice_url=ks.url, pin=ks.pin())
    return owner, user


def test_whole_flow_with_a_launched_runtime(ks: KeyServiceProcess) -> None:
    runtime_policy = Policy(measurements=frozenset({probe_measurement(ks.platform)}))
    owner, user = principals(ks)
    model_key, request_key = SymmetricKey.generate(), RequestKey.generate()
    with owner, user:
        assert owner.register() is True
        assert owner.register() is False
        assert user.register() is True
        mid = owner.model_id("resnet50")
        receipt = owner.put_model_key("resnet50", model_key)
        assert (receipt.model_id, receipt.version) == (mid, 1)
        owner.grant("resnet50", user.principal_id, runtime_policy)
        user.put_request_key(mid, request_key, runtime_policy)
        assert owner.model("resnet50").grants == (user.principal_id,)

        runtime = SimulatedRuntime(ks, launched=True)
        try:
            release = runtime.release([(user.principal_id, mid)])
            keys = release.keys[(user.principal_id, mid)]
            assert keys.model_key == model_key
            assert keys.request_key == request_key
            assert release.measurement == probe_measurement(ks.platform)
            assert release.expires_at > release.issued_at

            # rotation: the next release carries the new key and a newer epoch
            new_key = SymmetricKey.generate()
            assert owner.rotate_model_key("resnet50", new_key).version == 2
            rotated = runtime.release([(user.principal_id, mid)])
            assert rotated.keys[(user.principal_id, mid)].model_key == new_key
            assert rotated.revocation_epoch > release.revocation_epoch

            # revocation: effective for the next release
            epoch = owner.revoke("resnet50", user.principal_id)
            assert epoch > rotated.revocation_epoch
            with pytest.raises(AccessDenied):
                runtime.release([(user.principal_id, mid)])
            with pytest.raises(NotFound):
                owner.revoke("resnet50", user.principal_id)
        finally:
            runtime.close()


def test_policies_of_owner_and_user_both_apply(ks: KeyServiceProcess) -> None:
    probe = Policy(measurements=frozenset({probe_measurement(ks.platform)}))
    elsewhere = Policy(measurements=frozenset({"ab" * 32}))
    owner, user = principals(ks)
    with owner, user:
        owner.register()
        user.register()
        mid = owner.model_id("m")
        owner.put_model_key("m", SymmetricKey.generate())
        owner.grant("m", user.principal_id, probe)
        user.put_request_key(mid, RequestKey.generate(), elsewhere)  # the user refuses the probe
        runtime = SimulatedRuntime(ks)
        try:
            with pytest.raises(AccessDenied):
                runtime.release([(user.principal_id, mid)])
            user.put_request_key(mid, RequestKey.generate(), probe)
            assert runtime.release([(user.principal_id, mid)]).keys
            owner.grant("m", user.principal_id, elsewhere)  # the owner narrows its policy
            with pytest.raises(AccessDenied):
                runtime.release([(user.principal_id, mid)])
        finally:
            runtime.close()


def test_restart_between_writes_and_reads_loses_nothing(ks: KeyServiceProcess) -> None:
    probe = Policy(measurements=frozenset({probe_measurement(ks.platform)}))
    owner, user = principals(ks)
    model_key, request_key = SymmetricKey.generate(), RequestKey.generate()
    with owner, user:
        owner.register()
        user.register()
        mid = owner.model_id("kept")
        owner.put_model_key("kept", model_key)
        owner.grant("kept", user.principal_id, probe)
        user.put_request_key(mid, request_key, probe)
    ks.stop()
    ks.start()
    owner2 = Owner(owner.identity, keyservice_url=ks.url, pin=ks.pin())
    with owner2:
        assert owner2.register() is False  # the principal survived the restart
        assert owner2.model("kept").grants == (user.principal_id,)
    runtime = SimulatedRuntime(ks)
    try:
        keys = runtime.release([(user.principal_id, mid)]).keys[(user.principal_id, mid)]
        assert (keys.model_key, keys.request_key) == (model_key, request_key)
    finally:
        runtime.close()
