"""The sealed runtime's call surface: what its host and it say to each other over ipc.

The untrusted instance host drives a runtime through these calls and never imports the
runtime itself (nor the code that unseals); the runtime (:mod:`sealserve.runtime`) serves
them.  Everything here carries ids, sizes, timings and ciphertext only:

* :class:`Endpoint` — one side of an ipc connection: calls, replies, in-place payloads;
* :mod:`wire` — the frame format of the calls (``load``, ``infer``, ``evict``, ``stats``) and
  of the runtime's calls out through its host (``fetch``, ``keyservice``);
* :mod:`timings` — the stage names of a request and of a cold start, alike in replies,
  ``Server-Timing`` headers, metrics and benchmarks;
* :func:`runtime_launch_config` — the measured launch config that pins which KeyService a
  runtime trusts (what owners' grants then pin by measurement).

The design is in docs/runtime.md.
"""

from sealserve.ecall import _timings as timings
from sealserve.ecall import _wire as wire
from sealserve.ecall._pin import pin_from_launch_config, runtime_launch_config
from sealserve.ecall._rpc import Endpoint, Message

__all__ = [
    "Endpoint",
    "Message",
    "pin_from_launch_config",
    "runtime_launch_config",
    "timings",
    "wire",
]
