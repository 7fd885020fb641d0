"""The public inference API.

* :class:`Gateway` — the HTTP application (``POST /v1/models/{owner_id}/{name}:infer`` with
  sealed envelopes as binary bodies, ``GET /v1/models``, ``/v1/platform``, ``/healthz``,
  ``/metrics``) over the platform; it sees ciphertext only;
* :class:`GatewayServer` — the gateway on its own HTTP server (a lean inference path);
* with ``GatewayOptions(web=True)``, the browser client's page and module under ``/web/``
  (:func:`web_integrity` gives their Subresource Integrity hashes; docs/web.md);
* :class:`UploadService` — the model upload API (owners' signed, resumable, digest-checked
  uploads of sealed models into the store), mounted by the :class:`Gateway`;
* ``sealserve up`` wires it to a platform and a KeyService: :mod:`sealserve.deploy`;
* the header names and the routing decision's wire form are :mod:`sealserve.protocol`'s.

See docs/http-api.md and docs/operating.md.
"""

from sealserve.gateway._app import (
    Gateway,
    GatewayOptions,
    InferenceBackend,
    ModelDirectory,
    ScrapeTarget,
)
from sealserve.gateway._errors import error_for
from sealserve.gateway._metrics import GatewayMetrics
from sealserve.gateway._openapi import openapi_document
from sealserve.gateway._server import GatewayServer
from sealserve.gateway._uploads import UploadOptions, UploadService
from sealserve.gateway._web import web_integrity

__all__ = [
    "Gateway",
    "GatewayMetrics",
    "GatewayOptions",
    "GatewayServer",
    "InferenceBackend",
    "ModelDirectory",
    "ScrapeTarget",
    "UploadOptions",
    "UploadService",
    "error_for",
    "openapi_document",
    "web_integrity",
]
