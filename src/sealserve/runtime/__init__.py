"""SeMIRT, the sealed runtime: the only process that sees keys, models, inputs and outputs.

It runs as the ``runtime`` entry of the TEE platform (``sealserve.runtime._main``), started
and supervised by the instance host, and serves the calls of :mod:`sealserve.ecall` over an
ipc channel (``stats``, ``load``, ``infer``, ``evict``); its calls out (fetch a sealed model,
talk to the KeyService) go through the host, which only ever relays ciphertext.

* :class:`SealedRuntime` — keys, models and the executor that unseals, runs and seals;
* :class:`KeyBroker` / :class:`KeyCache` — key releases from the attested KeyService, cached
  with their expiry and revocation epoch;
* :class:`ModelCache` — unsealed models within a memory budget (the EPC budget);
* :class:`RuntimeServer` — the ecall surface over an :class:`~sealserve.ecall.Endpoint`.

The design is in docs/runtime.md.
"""

from sealserve.runtime._core import (
    ModelSource,
    RuntimeOptions,
    SealedModel,
    SealedOutput,
    SealedRuntime,
)
from sealserve.runtime._keys import KeyBroker, KeyCache, KeyCacheStats, KeyResult, Relay
from sealserve.runtime._models import Lease, ModelCache, ModelCacheStats, ResidentModel
from sealserve.runtime._plaintext import PlaintextBuffer
from sealserve.runtime._server import RuntimeServer
from sealserve.runtime._session import BAD_INPUT, OVER_LIMITS, LoadedModel, session_options

__all__ = [
    "BAD_INPUT",
    "KeyBroker",
    "KeyCache",
    "KeyCacheStats",
    "KeyResult",
    "Lease",
    "LoadedModel",
    "ModelCache",
    "ModelCacheStats",
    "ModelSource",
    "OVER_LIMITS",
    "PlaintextBuffer",
    "Relay",
    "ResidentModel",
    "RuntimeOptions",
    "RuntimeServer",
    "SealedModel",
    "SealedOutput",
    "SealedRuntime",
    "session_options",
]
