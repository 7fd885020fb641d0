"""The untrusted host of one serverless instance, and its model store.

An instance is a pair of processes: this host (HTTP, the model store, supervision) and the
sealed runtime it launches through the TEE platform and drives over shared memory with the
calls of :mod:`sealserve.ecall`.  The host sees ids, sizes, timings and ciphertext, never a
key or a plaintext, and imports none of the code that unseals.  See docs/runtime.md.

* :class:`ModelStore` — sealed models in a content-addressed directory, digest-checked;
  :class:`ObjectModelStore` the same in object storage (fsspec); :func:`open_store` opens
  either from a path or a URL (:class:`SealedModelStore` is what both offer);
* :class:`InstanceClient` — the binary endpoint, for the gateway, tests and benchmarks;
* :class:`InstanceHost`, :class:`RuntimeSupervisor`, :func:`serve_instance` — the host itself
  (``sealserve instance serve``).
"""

from sealserve.instance._app import ACTIVATION_MARKER, HostOptions, InstanceHost
from sealserve.instance._blobs import SealedModelReader, SealedModelWriter, WriterState
from sealserve.instance._broker import BrokerMessage, HostBroker, receive_broker_message
from sealserve.instance._client import InferResult, InstanceClient
from sealserve.instance._metrics import InstanceMetrics
from sealserve.instance._objstore import ObjectModelStore
from sealserve.instance._server import SPAWNED_AT_ENV, InstanceConfig, serve_instance
from sealserve.instance._store import (
    MANIFEST_SCHEMA,
    SEALED_HEADER_BYTES,
    ModelManifest,
    ModelStore,
    SealedModelStore,
    check_sealed_header,
    open_store,
)
from sealserve.instance._supervisor import (
    RuntimeGeneration,
    RuntimeHandle,
    RuntimeStatus,
    RuntimeSupervisor,
    SupervisorOptions,
)

__all__ = [
    "ACTIVATION_MARKER",
    "BrokerMessage",
    "HostBroker",
    "HostOptions",
    "InferResult",
    "InstanceClient",
    "InstanceConfig",
    "InstanceHost",
    "InstanceMetrics",
    "MANIFEST_SCHEMA",
    "ModelManifest",
    "ModelStore",
    "ObjectModelStore",
    "RuntimeGeneration",
    "RuntimeHandle",
    "RuntimeStatus",
    "RuntimeSupervisor",
    "SEALED_HEADER_BYTES",
    "SPAWNED_AT_ENV",
    "SealedModelReader",
    "SealedModelStore",
    "SealedModelWriter",
    "SupervisorOptions",
    "WriterState",
    "check_sealed_header",
    "open_store",
    "receive_broker_message",
    "serve_instance",
]
