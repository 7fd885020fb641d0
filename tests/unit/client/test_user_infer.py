"""``User.infer``: the user knows who it is, and registers a request key on a model's first use.

The gateway here is a fake that plays the runtime honestly: it gets the request key the way a
runtime does (released by the in-process KeyService to an attested runtime), unseals the
input, doubles ``X`` and seals the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from sealserve.client import Identity, User
from sealserve.crypto import RequestKey, seal, unseal
from sealserve.errors import AccessDenied
from sealserve.protocol import (
    decode_tensors,
    encode_tensors,
    input_context,
    output_context,
)
from sealserve.protocol import headers as hd
from sealserve.runtime import KeyBroker
from tests.unit.runtime.graphs import dense_model
from tests.unit.runtime.keyservice import InProcessKeyService


class Counting(httpx.BaseTransport):
    """The KeyService's transport, counting the request keys put through it."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.request_keys_put = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/request-keys/" in request.url.path:
            self.request_keys_put += 1
        return self.inner.handle_request(request)


class Runtime:
    """The gateway and an attested runtime behind it: doubles ``X``."""

    def __init__(self, broker: KeyBroker) -> None:
        self.broker = broker

    def __call__(self, request: httpx.Request) -> httpx.Response:
        owner, name = request.url.path.removeprefix("/v1/models/").split(":")[0].split("/")
        ids = {
            "model_id": f"{owner}/{name}",
            "user_id": request.headers[hd.USER_HEADER],
            "request_id": request.headers[hd.REQUEST_ID_HEADER],
        }
        try:
            keys = self.broker.keys_for(ids["user_id"], ids["model_id"], deadline=None).keys
        except AccessDenied:
            error = {"code": "access_denied", "message": "access denied", "retryable": False}
            return httpx.Response(403, json={"error": error})
        tensors = decode_tensors(
            unseal(keys.request_key.input_key, request.content, context=input_context(**ids))
        )
        out = encode_tensors({"Y": tensors["X"] * 2})
        sealed = seal(keys.request_key.output_key, out, context=output_context(**ids))
        return httpx.Response(200, content=sealed)


@pytest.fixture
def ks(tmp_path: Path) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path / "ks")
    try:
        yield harness
    finally:
        harness.close()


def user_of(ks: InProcessKeyService, **kwargs: object) -> tuple[User, Counting]:
    counting = Counting(ks.transport)
    user = User(
        Identity.generate(),
        keyservice_url="http://ks",
        pin=ks.pin,
        clock=ks.clock,
        transport=counting,
        **kwargs,  # type: ignore[arg-type]
    )
    return user, counting


def test_a_first_inference_registers_a_request_key_and_later_ones_reuse_it(
    ks: InProcessKeyService,
) -> None:
    model_id, _ = ks.add_model("m", dense_model(1), grant=False)
    user, counting = user_of(
        ks,
        gateway_url="http://gw",
        gateway_transport=httpx.MockTransport(Runtime(ks.broker())),
        runtime=ks.runtime_policy,
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with user:
        user.register()
        ks.owner.grant("m", user.principal_id, ks.runtime_policy)
        first = user.infer(model_id, {"X": x})
        second = user.infer(model_id, {"X": x + 1})
        assert counting.request_keys_put == 1
        np.testing.assert_array_equal(first.outputs["Y"], x * 2)
        np.testing.assert_array_equal(second.outputs["Y"], (x + 1) * 2)
        assert first.request_id != second.request_id


def test_a_key_put_by_the_user_is_the_one_infer_uses(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(2), grant=False)
    user, counting = user_of(
        ks,
        gateway_url="http://gw",
        gateway_transport=httpx.MockTransport(Runtime(ks.broker())),
    )
    key = RequestKey.generate()
    with user:
        user.register()
        ks.owner.grant("m", user.principal_id, ks.runtime_policy)
        user.put_request_key(model_id, key, ks.runtime_policy)
        assert user.request_key(model_id) is key
        result = user.infer(model_id, {"X": np.ones(3, dtype=np.float32)})
        assert counting.request_keys_put == 1
        np.testing.assert_array_equal(result.outputs["Y"], np.full(3, 2, dtype=np.float32))


def test_an_ungranted_user_is_denied(ks: InProcessKeyService) -> None:
    model_id, _ = ks.add_model("m", dense_model(3), grant=False)
    user, _ = user_of(
        ks,
        gateway_url="http://gw",
        gateway_transport=httpx.MockTransport(Runtime(ks.broker())),
        runtime=ks.runtime_policy,
    )
    with user:
        user.register()
        with pytest.raises(AccessDenied):
            user.infer(model_id, {"X": np.ones(3, dtype=np.float32)})


def test_without_a_gateway_or_a_runtime_policy_infer_says_what_is_missing(
    ks: InProcessKeyService,
) -> None:
    model_id, _ = ks.add_model("m", dense_model(4), grant=False)
    no_gateway, _ = user_of(ks, runtime=ks.runtime_policy)
    with no_gateway, pytest.raises(ValueError, match="gateway_url"):
        no_gateway.infer(model_id, {"X": np.ones(3, dtype=np.float32)})
    no_policy, counting = user_of(
        ks, gateway_url="http://gw", gateway_transport=httpx.MockTransport(Runtime(ks.broker()))
    )
    with no_policy, pytest.raises(ValueError, match="runtime="):
        no_policy.infer(model_id, {"X": np.ones(3, dtype=np.float32)})
    assert counting.request_keys_put == 0


def test_runtime_must_be_a_policy(ks: InProcessKeyService) -> None:
    with pytest.raises(TypeError, match="runtime must be a Policy"):
        user_of(ks, runtime="sha256:abc")
