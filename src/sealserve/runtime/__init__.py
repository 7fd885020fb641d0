"""SeMIRT, the sealed runtime: the only process that sees keys, models, inputs and outputs.

It runs as the ``runtime`` entry of the TEE platform (``sealserve.runtime._main``), started
and supervised by the instance host, and serves four calls over an ipc channel (``stats``,
``load``, ``infer``, ``evict``); its calls out (fetch a sealed model, talk to the KeyService)
go through the host, which only ever relays ciphertext.  The design is in docs/runtime.md.

Three audiences, one package:

* clients: the envelopes of an inference (:func:`seal_input`, :func:`unseal_output`, the
  contexts both sides bind) — light, no onnxruntime;
* whoever launches a runtime: :func:`runtime_launch_config` (the measured KeyService pin),
  the stage names of :mod:`timings`, the frame format of :mod:`wire` and :class:`Endpoint`;
* the runtime itself: :class:`SealedRuntime`, :class:`KeyBroker`, :class:`ModelCache`, ...

Heavy names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealserve import _lazy
from sealserve.runtime import _timings as timings
from sealserve.runtime import _wire as wire
from sealserve.runtime._envelopes import (
    INPUT_PURPOSE,
    OUTPUT_PURPOSE,
    check_request_id,
    input_context,
    new_request_id,
    output_context,
    seal_input,
    unseal_output,
)
from sealserve.runtime._pin import (
    KEYSERVICE_POLICY_KEY,
    PLATFORM_KEYS_KEY,
    pin_from_launch_config,
    runtime_launch_config,
)

if TYPE_CHECKING:
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
    from sealserve.runtime._rpc import (
        Endpoint,
        EndpointState,
        Message,
        OutgoingCall,
        PayloadWriter,
    )
    from sealserve.runtime._server import HostModelSource, HostRelay, RuntimeServer
    from sealserve.runtime._session import BAD_INPUT, LoadedModel, session_options

__all__ = [
    "BAD_INPUT",
    "Endpoint",
    "EndpointState",
    "HostModelSource",
    "HostRelay",
    "INPUT_PURPOSE",
    "KEYSERVICE_POLICY_KEY",
    "KeyBroker",
    "KeyCache",
    "KeyCacheStats",
    "KeyResult",
    "Lease",
    "LoadedModel",
    "Message",
    "ModelCache",
    "ModelCacheStats",
    "ModelSource",
    "OUTPUT_PURPOSE",
    "OutgoingCall",
    "PLATFORM_KEYS_KEY",
    "PayloadWriter",
    "PlaintextBuffer",
    "Relay",
    "ResidentModel",
    "RuntimeOptions",
    "RuntimeServer",
    "SealedModel",
    "SealedOutput",
    "SealedRuntime",
    "check_request_id",
    "input_context",
    "new_request_id",
    "output_context",
    "pin_from_launch_config",
    "runtime_launch_config",
    "seal_input",
    "session_options",
    "timings",
    "unseal_output",
    "wire",
]

__getattr__, __dir__ = _lazy.exports(
    __name__,
    globals(),
    {
        "ModelSource": "_core",
        "RuntimeOptions": "_core",
        "SealedModel": "_core",
        "SealedOutput": "_core",
        "SealedRuntime": "_core",
        "KeyBroker": "_keys",
        "KeyCache": "_keys",
        "KeyCacheStats": "_keys",
        "KeyResult": "_keys",
        "Relay": "_keys",
        "Lease": "_models",
        "ModelCache": "_models",
        "ModelCacheStats": "_models",
        "ResidentModel": "_models",
        "PlaintextBuffer": "_plaintext",
        "Endpoint": "_rpc",
        "EndpointState": "_rpc",
        "Message": "_rpc",
        "PayloadWriter": "_rpc",
        "OutgoingCall": "_rpc",
        "HostModelSource": "_server",
        "HostRelay": "_server",
        "RuntimeServer": "_server",
        "BAD_INPUT": "_session",
        "LoadedModel": "_session",
        "session_options": "_session",
    },
)
