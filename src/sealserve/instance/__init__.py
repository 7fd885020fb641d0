"""The untrusted host of one serverless instance, and its model store.

An instance is a pair of processes: this host (HTTP, the model store, supervision) and the
sealed runtime it launches through the TEE platform and feeds over shared memory.  The host
sees ids, sizes, timings and ciphertext, never a key or a plaintext.  See docs/runtime.md.

* :class:`ModelStore` — sealed models in a content-addressed directory, digest-checked;
* :class:`InstanceClient` — the binary endpoint, for the gateway, tests and benchmarks;
* :class:`InstanceHost`, :class:`RuntimeSupervisor`, :func:`serve_instance` — the host itself
  (``sealserve instance serve``).

Names that pull in the web server are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealserve import _lazy
from sealserve.instance import _headers as headers
from sealserve.instance._blobs import SealedModelReader, SealedModelWriter, WriterState
from sealserve.instance._client import ClientState, InferResult, InstanceClient, raise_for_error
from sealserve.instance._errors import RETRY_AFTER_S, HostError, error_for_exception
from sealserve.instance._store import MANIFEST_SCHEMA, ModelManifest, ModelStore

if TYPE_CHECKING:
    from sealserve.instance._app import ACTIVATION_MARKER, HostOptions, InstanceHost
    from sealserve.instance._metrics import InstanceMetrics
    from sealserve.instance._server import (
        SPAWNED_AT_ENV,
        InstanceConfig,
        process_age_s,
        serve_instance,
    )
    from sealserve.instance._supervisor import (
        RuntimeGeneration,
        RuntimeHandle,
        RuntimeSupervisor,
        SupervisorOptions,
        SupervisorState,
    )

__all__ = [
    "ACTIVATION_MARKER",
    "ClientState",
    "HostError",
    "HostOptions",
    "InferResult",
    "InstanceClient",
    "InstanceConfig",
    "InstanceHost",
    "InstanceMetrics",
    "MANIFEST_SCHEMA",
    "ModelManifest",
    "ModelStore",
    "RETRY_AFTER_S",
    "RuntimeGeneration",
    "RuntimeHandle",
    "RuntimeSupervisor",
    "SPAWNED_AT_ENV",
    "SealedModelReader",
    "SealedModelWriter",
    "SupervisorOptions",
    "SupervisorState",
    "WriterState",
    "error_for_exception",
    "headers",
    "process_age_s",
    "raise_for_error",
    "serve_instance",
]

__getattr__, __dir__ = _lazy.exports(
    __name__,
    globals(),
    {
        "ACTIVATION_MARKER": "_app",
        "HostOptions": "_app",
        "InstanceHost": "_app",
        "InstanceMetrics": "_metrics",
        "SPAWNED_AT_ENV": "_server",
        "InstanceConfig": "_server",
        "process_age_s": "_server",
        "serve_instance": "_server",
        "RuntimeGeneration": "_supervisor",
        "RuntimeHandle": "_supervisor",
        "RuntimeSupervisor": "_supervisor",
        "SupervisorOptions": "_supervisor",
        "SupervisorState": "_supervisor",
    },
)
