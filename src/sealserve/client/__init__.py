"""The SDK of model owners and users: what the CLI calls.

:class:`Owner` and :class:`User` hold an identity and an attested connection to the
KeyService (:class:`KeyServiceClient`, pinned by a :class:`KeyServicePin`); every key they
upload is HPKE-wrapped to the KeyService's attested public key.
"""

from sealserve.client._keyservice import ClientState, KeyServiceClient, KeyServicePin
from sealserve.client._principals import (
    ModelInfo,
    ModelKeyReceipt,
    Owner,
    RequestKeyReceipt,
    User,
)

__all__ = [
    "ClientState",
    "KeyServiceClient",
    "KeyServicePin",
    "ModelInfo",
    "ModelKeyReceipt",
    "Owner",
    "RequestKeyReceipt",
    "User",
]
