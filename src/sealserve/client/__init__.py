"""The SDK of model owners and users: what the CLI calls.

A first inference needs this package only::

    from sealserve.client import Identity, KeyServicePin, Policy, User

    pin = KeyServicePin.default(data_dir)  # the KeyService 'sealserve up' started there
    runtime = Policy(measurements=frozenset({runtime_measurement}))
    with User(Identity.generate(), keyservice_url=keyservice, pin=pin,
              gateway_url=gateway, runtime=runtime) as user:
        user.register()
        result = user.infer("<owner_id>/<model>", {"input": batch})
    result.outputs

:class:`Owner` and :class:`User` hold an identity and an attested connection to the
KeyService (:class:`KeyServiceClient`, pinned by a :class:`KeyServicePin`); every key they
upload is HPKE-wrapped to the KeyService's attested public key.

:func:`upload_model` seals a model and stores it, through the gateway's upload API
(:class:`StoreClient`) or straight into a model store directory, and hands its key over
(after :func:`check_onnx_model`);
:class:`GatewayClient` is the user's side of an inference (seal the input, send it to the
gateway, unseal the output); :func:`web_credentials` packs a user's request key for the
browser client (docs/web.md).
"""

from sealserve.attest import Policy
from sealserve.client._gateway import GatewayAnswer, GatewayClient, Inference
from sealserve.client._keyservice import KeyServiceClient, KeyServicePin
from sealserve.client._principals import Owner, User
from sealserve.client._store import StoreClient
from sealserve.client._upload import (
    SealedUpload,
    UploadReceipt,
    check_onnx_model,
    declare_input_limits,
    seal_for_upload,
    send_sealed,
    upload_model,
)
from sealserve.client._web import WEB_CREDENTIALS_KIND, web_credentials
from sealserve.crypto import Identity, RequestKey

__all__ = [
    "GatewayAnswer",
    "GatewayClient",
    "Identity",
    "Inference",
    "KeyServiceClient",
    "KeyServicePin",
    "Owner",
    "Policy",
    "RequestKey",
    "SealedUpload",
    "StoreClient",
    "UploadReceipt",
    "User",
    "WEB_CREDENTIALS_KIND",
    "check_onnx_model",
    "declare_input_limits",
    "seal_for_upload",
    "send_sealed",
    "upload_model",
    "web_credentials",
]
