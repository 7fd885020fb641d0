"""Revocation through a real instance: honoured once the released keys' TTL has passed.

The KeyService runs with a 2-second release TTL (a measured setting: the runtime pins the
KeyService measurement that carries it).  A pair the KeyService refused is refused again by the
runtime for ``DENIED_PAIR_TTL_S`` without asking, so a new grant serves once that has passed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from sealserve.bench._runtime_stack import LocalStack, infer_tensors
from sealserve.config import KeyServiceSettings
from sealserve.errors import AccessDenied
from sealserve.runtime._keys import DENIED_PAIR_TTL_S
from tests.unit.runtime.graphs import dense_model

TTL_S = 2.0


@pytest.fixture(scope="module")
def short_ttl_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = KeyServiceSettings(release_ttl_s=TTL_S)
    with LocalStack(tmp_path_factory.mktemp("ttl"), keyservice_settings=settings) as stack:
        yield stack


def x(seed: int) -> dict[str, Any]:
    return {"X": np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)}


def test_a_revoked_grant_is_refused_once_the_ttl_has_passed(short_ttl_stack: LocalStack) -> None:
    stack = short_ttl_stack
    assert stack.owner is not None
    assert stack.user is not None
    model = stack.add_model("dense", dense_model(60))
    user = stack.user.principal_id
    with stack.start_instance() as instance:
        infer_tensors(
            instance.client, model.request_key, x(0), model_id=model.model_id, user_id=user
        )
        revoked_at = time.monotonic()
        stack.owner.revoke(model.name, user)
        while time.monotonic() - revoked_at < TTL_S + 0.2:  # real processes: wait out the TTL
            time.sleep(0.1)
        with pytest.raises(AccessDenied):
            infer_tensors(
                instance.client, model.request_key, x(1), model_id=model.model_id, user_id=user
            )
        denied_at = time.monotonic()  # the runtime remembered the refusal before it answered
        # A new grant (a new epoch) serves again, once the runtime's memory of the refusal has
        # passed (it is bounded in code; waiting longer on a loaded machine changes nothing).
        stack.owner.grant(model.name, user, stack.runtime_policy)
        while time.monotonic() - denied_at < DENIED_PAIR_TTL_S + 0.2:
            time.sleep(0.1)
        outputs, _ = infer_tensors(
            instance.client, model.request_key, x(2), model_id=model.model_id, user_id=user
        )
        assert outputs["Y"].shape == (1, 16)
        keys = instance.client.stats()["runtime"]["keys"]
        assert keys["expired"] >= 1
        assert keys["releases"] >= 2  # the grant's keys came from a new release
