"""A user's web credentials: what the browser client needs to run inferences, in one file.

``{"kind": "sealserve-web-credentials", "version": 1, "user_id", "model_id",
"request_key"}`` (``request_key``: unpadded base64url of the 32-byte root), read by
``loadWebCredentials`` of ``sealserve.js`` (docs/web.md).  It holds a secret: the request key
opens every input and output of that user for that model, so it is written with mode 0600
and should be handled like the key file it comes from.  The key must already be registered
with the KeyService (``sealserve user request-key``) and the model granted to the user.
"""

from __future__ import annotations

import base64
import json
from typing import Final

from sealserve.crypto import RequestKey
from sealserve.protocol import check_principal_id, split_model_id

__all__ = ["WEB_CREDENTIALS_KIND", "web_credentials"]

#: The ``kind`` of a web credentials document.
WEB_CREDENTIALS_KIND: Final = "sealserve-web-credentials"


def web_credentials(*, user_id: str, model_id: str, request_key: RequestKey) -> bytes:
    """The web credentials document (UTF-8 JSON) of ``user_id``'s request key for
    ``model_id``."""
    check_principal_id(user_id, name="user_id")
    split_model_id(model_id)
    if not isinstance(request_key, RequestKey):
        raise TypeError(f"request_key must be a RequestKey, got {type(request_key).__name__}")
    root = base64.urlsafe_b64encode(request_key.to_bytes()).rstrip(b"=").decode("ascii")
    document = {
        "kind": WEB_CREDENTIALS_KIND,
        "version": 1,
        "user_id": user_id,
        "model_id": model_id,
        "request_key": root,
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")
