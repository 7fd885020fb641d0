"""SeMIRT's core: the only place where keys, models, inputs and outputs are in the clear.

:class:`SealedRuntime` implements the four ecalls on top of a :class:`KeyBroker` (released
keys), a :class:`ModelCache` (unsealed models within the memory budget) and a
:class:`ModelSource` (the fetch ocall).  It is transport-free: the runtime process
(``_main``) feeds it from the ipc channel, the unit tests call it directly with fakes.

A request (``infer``):

1. keys of (user, model): cached, or released now by the attested KeyService;
2. a lease on the model: resident, or fetched (sealed, from shared memory), unsealed straight
   into one private buffer, turned into an onnxruntime session and wiped;
3. the input unsealed with the request key's input subkey and a context that binds model,
   user and request id, decoded in place;
4. inference; the output encoded and sealed with the output subkey (same ids) straight
   into the reply's shared memory.

In ``baseline`` mode (SeSeMI's comparison point) steps 1 and 2 start from nothing on every
request: a new key pair, a new attestation and release, a new fetch, unseal and session,
thrown away after the request.

Nothing that comes from a plaintext reaches an error message or a log line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.crypto import seal_into, sealed_size, unseal_into, unseal_model, unsealed_size
from sealserve.ecall import timings as st
from sealserve.errors import (
    DeadlineExceeded,
    InvalidEnvelope,
    ModelNotAvailable,
    TensorFormatError,
)
from sealserve.protocol import (
    SEALED_MODEL_HEADER_SIZE,
    ReleasedKeys,
    SealedModelHeader,
    check_request_id,
    decode_tensors,
    encode_tensors_into,
    encoded_size,
    input_context,
    output_context,
    split_model_id,
)
from sealserve.runtime._hardening import process_protection
from sealserve.runtime._keys import KeyBroker
from sealserve.runtime._models import Lease, ModelCache, Reserve
from sealserve.runtime._plaintext import PlaintextBuffer
from sealserve.runtime._session import BAD_INPUT, LoadedModel

__all__ = [
    "MAX_INPUT_AGE_S",
    "ModelSource",
    "RuntimeOptions",
    "SealedModel",
    "SealedOutput",
    "SealedRuntime",
]

_log = get_logger(__name__)
_MIB = 1 << 20
#: The longest a sealed input may have been sealed before the runtime opens it (seconds): the
#: replay window of a captured input.  Bounded here, in the measured code, because the age
#: the runtime is started with is the untrusted host's argument.
MAX_INPUT_AGE_S: Final = 3600.0
_TAG = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """How the runtime serves; none of these weakens what it protects (not measured)."""

    #: Plaintext models held at once (the EPC analogue).
    memory_budget_bytes: int = 1024 * _MIB
    #: onnxruntime intra-op threads per session.
    threads: int = 2
    #: Requests served at once (the executor pool).
    workers: int = 4
    #: Memory charged per model byte: onnxruntime holds the weights plus pre-packed copies
    #: and activations (measured here: ~4x for float CNNs, ~9x for int8 MiniLM).
    memory_factor: float = 4.0
    #: Refuse sealed inputs older than this (seconds; bounds replays of captured inputs).  The
    #: host chooses it, so only within :data:`MAX_INPUT_AGE_S`: it may make the bound
    #: stricter, never looser.
    max_input_age_s: float = 3600.0
    #: SeSeMI's per-request baseline: no key cache, no model cache.
    baseline: bool = False
    #: What inferences may allocate at once, over all requests (onnxruntime's arena cap; the
    #: runtime process sets it, :func:`~._session.configure_inference_memory`).  ``None``:
    #: as much as ``memory_budget_bytes``.
    inference_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_budget_bytes", "threads", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        value = self.inference_memory_bytes
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < _MIB
        ):
            raise ValueError(f"inference_memory_bytes must be an int >= 1 MiB, got {value!r}")
        if not self.memory_factor >= 1.0:
            raise ValueError(f"memory_factor must be >= 1.0, got {self.memory_factor!r}")
        age = self.max_input_age_s
        if (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not 0 < age <= MAX_INPUT_AGE_S
        ):
            raise ValueError(f"max_input_age_s must be within (0, {MAX_INPUT_AGE_S}], got {age!r}")


class SealedModel(Protocol):
    """A sealed model fetched into (shared) memory; released when done."""

    @property
    def view(self) -> memoryview: ...

    @property
    def key_version(self) -> int: ...

    def release(self) -> None: ...


class ModelSource(Protocol):
    """Where sealed models come from (the host, through the fetch ocall)."""

    def fetch(self, model_id: str, *, deadline: float | None) -> SealedModel: ...


@dataclasses.dataclass(frozen=True, slots=True)
class SealedOutput:
    """What an inference produced: ``size`` bytes that :meth:`write` seals into a buffer."""

    size: int
    write: Callable[[memoryview], None]
    timings: st.StageTimer


def sealed_model_header(sealed: memoryview) -> SealedModelHeader:
    """The header of a sealed model (unchecked: the unseal authenticates everything)."""
    if len(sealed) < SEALED_MODEL_HEADER_SIZE + _TAG:
        raise ModelNotAvailable("the stored model is not a sealed model")
    try:
        return SealedModelHeader.parse(sealed[:SEALED_MODEL_HEADER_SIZE])
    except ValueError as exc:
        raise ModelNotAvailable(f"the stored model does not open here: {exc}") from None


def sealed_model_plaintext_size(sealed: memoryview) -> int:
    """The plaintext length of a sealed model, from its header and length (unchecked: the
    unseal authenticates everything)."""
    chunk_size = sealed_model_header(sealed).chunk_size
    body = len(sealed) - SEALED_MODEL_HEADER_SIZE
    chunks = -(-body // (chunk_size + _TAG))
    return max(0, body - chunks * _TAG)


class SealedRuntime:
    """The ecalls (see the module docstring).  Thread-safe: call from an executor pool."""

    def __init__(
        self,
        *,
        options: RuntimeOptions,
        keys: KeyBroker,
        source: ModelSource,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.options = options
        self._keys = keys
        self._source = source
        self._clock = clock
        self._models: ModelCache[LoadedModel] = ModelCache(
            budget_bytes=options.memory_budget_bytes, clock=clock
        )
        self._started = time.monotonic()
        self._requests = 0
        self._failures = 0

    # -- ecalls --------------------------------------------------------------------------------

    def load(self, *, model_id: str, user_id: str, deadline: float | None) -> dict[str, float]:
        """Make ``model_id`` resident (with the keys of ``user_id``); its stage timings."""
        _check_ids(model_id, user_id)
        timer = st.StageTimer()
        keys = self._obtain_keys(user_id, model_id, deadline, timer)
        if self.options.baseline:
            lease = self._fresh_model(keys, deadline, timer)
        else:
            lease = self._lease(keys, deadline, timer)
        lease.release()
        return timer.to_dict()

    def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: memoryview,
        deadline: float | None,
        input_consumed: Callable[[], None] | None = None,
        detach: Callable[[], memoryview] | None = None,
    ) -> SealedOutput:
        """Serve one request; the output is sealed by :attr:`SealedOutput.write`.

        ``input_consumed`` is called once the sealed input has been read (its shared memory
        may then be reused).  ``detach()``, if given, is called instead before the request
        waits for keys or a model: it returns a private copy of the sealed input and lets the
        shared memory go, so a slow cold path never holds up the channel.

        Errors: the fixed ``InvalidEnvelope`` (wrong key, tampered, another request's input),
        ``AccessDenied`` (no keys released), ``ValueError`` with :data:`BAD_INPUT`,
        ``DeadlineExceeded``, ``ModelNotAvailable``, ``MemoryBudgetExceeded``.
        """
        _check_ids(model_id, user_id)
        check_request_id(request_id)
        self._requests += 1
        timer = st.StageTimer()
        consumed = False

        def consume() -> None:
            nonlocal consumed
            if not consumed and input_consumed is not None:
                consumed = True
                input_consumed()

        try:
            self._check_deadline(deadline, "before the request started")
            if detach is not None and not self._warm(user_id, model_id):
                sealed_input = detach()
            keys = self._obtain_keys(user_id, model_id, deadline, timer)
            if self.options.baseline:
                lease = self._fresh_model(keys, deadline, timer)
            else:
                lease = self._lease(keys, deadline, timer)
            with lease:
                ids = {"model_id": model_id, "user_id": user_id, "request_id": request_id}
                with timer.stage(st.INPUT_UNSEAL):
                    plaintext = self._unseal_input(keys, sealed_input, ids)
                consume()
                try:
                    self._check_deadline(deadline, "before inference")
                    with timer.stage(st.INPUT_UNSEAL):
                        try:
                            tensors = decode_tensors(plaintext, copy=False)
                        except (TensorFormatError, ValueError, TypeError):
                            raise ValueError(BAD_INPUT) from None
                    with timer.stage(st.INFERENCE):
                        outputs = lease.value.run(tensors, timeout_s=self._remaining(deadline))
                    del tensors
                finally:
                    _wipe(memoryview(plaintext))
            encoded = bytearray(encoded_size(outputs))
            encode_tensors_into(outputs, encoded)
            for array in outputs.values():
                if array.flags.writeable:
                    array.fill(0)
            del outputs
        except BaseException:
            self._failures += 1
            consume()
            raise
        output_key = keys.request_key.output_key
        out_context = output_context(**ids)

        def write(out: memoryview) -> None:
            try:
                with timer.stage(st.OUTPUT_SEAL):
                    seal_into(output_key, encoded, out, context=out_context, clock=self._clock)
            finally:
                _wipe(memoryview(encoded))

        return SealedOutput(size=sealed_size(len(encoded)), write=write, timings=timer)

    def prepare(self, *, deadline: float | None) -> dict[str, float]:
        """Attest the KeyService before any model is asked for (an instance started ahead of
        its requests is then ready to release keys); its timing, under
        ``attestation_key_release``."""
        seconds = self._keys.prepare(deadline=deadline)
        timer = st.StageTimer()
        if seconds > 0:
            timer.add(st.ATTESTATION_KEY_RELEASE, seconds)
        return timer.to_dict()

    def evict(self, model_id: str) -> bool:
        """Drop ``model_id`` (at once if idle, else after its last request); ``False`` if it
        was not resident."""
        return self._models.evict(model_id)

    def stats(self) -> dict[str, Any]:
        """What the host may know: counts, sizes, ids; never a key or a plaintext."""
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "baseline": self.options.baseline,
            "threads": self.options.threads,
            "workers": self.options.workers,
            "requests": self._requests,
            "failures": self._failures,
            # Public (it is what evidence binds): tells runtimes apart, e.g. forked ones.
            "public_key_sha256": hashlib.sha256(self._keys.public_key).hexdigest(),
            "rss_bytes": _rss_bytes(),
            "protection": process_protection(),
            "models": self._models.stats().to_json(),
            "keys": self._keys.cache.stats().to_json(),
        }

    def close(self) -> None:
        """Drop every model and key, and stop the key broker's poller."""
        self._models.clear()
        self._keys.cache.clear()
        self._keys.close()

    # -- steps ---------------------------------------------------------------------------------

    def _warm(self, user_id: str, model_id: str) -> bool:
        """Whether a request would find its keys and model at once (a hint; races are fine)."""
        if self.options.baseline:
            return False
        return self._keys.cache.holds(user_id, model_id) and model_id in self._models

    def _obtain_keys(
        self, user_id: str, model_id: str, deadline: float | None, timer: st.StageTimer
    ) -> ReleasedKeys:
        result = self._keys.keys_for(user_id, model_id, deadline=deadline)
        if result.seconds > 0:
            timer.add(st.ATTESTATION_KEY_RELEASE, result.seconds)
        return result.keys

    def _lease(
        self, keys: ReleasedKeys, deadline: float | None, timer: st.StageTimer
    ) -> Lease[LoadedModel]:
        started = time.perf_counter()
        lease = self._models.acquire(
            keys.model_id,
            version=keys.model_key_version,
            loader=lambda reserve: self._load(keys, reserve, deadline, timer),
            deadline=deadline,
        )
        if lease.waited:
            timer.add(st.MODEL_WAIT, time.perf_counter() - started)
        return lease

    def _fresh_model(
        self, keys: ReleasedKeys, deadline: float | None, timer: st.StageTimer
    ) -> Lease[LoadedModel]:
        """Baseline mode: a private cache of one, emptied when the request ends."""
        cache: ModelCache[LoadedModel] = ModelCache(
            budget_bytes=self.options.memory_budget_bytes, clock=self._clock
        )
        lease = cache.acquire(
            keys.model_id,
            version=keys.model_key_version,
            loader=lambda reserve: self._load(keys, reserve, deadline, timer),
            deadline=deadline,
        )
        cache.evict(keys.model_id)  # closed as soon as the lease is released
        return lease

    def _load(
        self, keys: ReleasedKeys, reserve: Reserve, deadline: float | None, timer: st.StageTimer
    ) -> LoadedModel:
        model_id = keys.model_id
        with timer.stage(st.MODEL_FETCH):
            sealed = self._source.fetch(model_id, deadline=deadline)
        try:
            if sealed.key_version != keys.model_key_version:
                raise ModelNotAvailable(
                    f"model {model_id!r} in the store is sealed under key version "
                    f"{sealed.key_version}; the KeyService released version "
                    f"{keys.model_key_version} (re-seal and upload it)"
                )
            started = time.perf_counter()
            view = sealed.view
            bound = sealed_model_header(view).model_version
            if bound != keys.model_key_version:  # the unseal below checks it authenticated
                raise ModelNotAvailable(
                    f"model {model_id!r} in the store is version {bound}; the KeyService "
                    f"says version {keys.model_key_version} is current (the store serves an "
                    "old or a newer file)"
                )
            size = sealed_model_plaintext_size(view)
            charged = int(size * self.options.memory_factor)
            reserve(charged)
            unsealing = time.perf_counter()
            buffer = PlaintextBuffer(max(size, 2))
            try:
                unseal_model(
                    keys.model_key,
                    view,
                    model_id=model_id,
                    version=keys.model_key_version,
                    out=buffer.view,
                )
            except (InvalidEnvelope, ValueError):
                buffer.wipe()
                raise ModelNotAvailable(
                    f"model {model_id!r} does not unseal with the key and version the "
                    "KeyService released (it was tampered with, or sealed under another key "
                    "or for another version)"
                ) from None
            del view
        finally:
            sealed.release()
        model = LoadedModel.build(
            buffer,
            model_id=model_id,
            version=keys.model_key_version,
            threads=self.options.threads,
            charged_bytes=charged,
        )
        timer.add(st.MODEL_UNSEAL_SESSION, time.perf_counter() - unsealing)
        _log.event(
            "runtime.model_loaded",
            model_id=model_id,
            model_bytes=size,
            charged_bytes=charged,
            reserve_ms=round((unsealing - started) * 1000, 3),
        )
        return model

    def _unseal_input(
        self, keys: ReleasedKeys, sealed_input: memoryview, ids: dict[str, str]
    ) -> bytearray:
        try:
            size = unsealed_size(len(sealed_input))
        except ValueError:
            raise InvalidEnvelope() from None
        plaintext = bytearray(size)
        unseal_into(
            keys.request_key.input_key,
            sealed_input,
            plaintext,
            context=input_context(**ids),
            max_age_s=self.options.max_input_age_s,
            clock=self._clock,
        )
        return plaintext

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._clock.monotonic()

    def _check_deadline(self, deadline: float | None, when: str) -> None:
        if deadline is not None and self._clock.monotonic() >= deadline:
            raise DeadlineExceeded(f"the request's deadline passed {when}")


_PRINCIPAL = re.compile(r"[0-9a-f]{64}")


def _check_ids(model_id: str, user_id: str) -> None:
    split_model_id(model_id)
    if not isinstance(user_id, str) or not _PRINCIPAL.fullmatch(user_id):
        raise ValueError(f"user_id must be a principal id (64 hex digits), got {user_id!r}")


_ZEROS = bytes(1 << 16)


def _wipe(view: memoryview) -> None:
    for start in range(0, len(view), len(_ZEROS)):
        end = min(start + len(_ZEROS), len(view))
        view[start:end] = _ZEROS[: end - start]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
