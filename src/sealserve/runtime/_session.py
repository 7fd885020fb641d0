"""A model inside the runtime: one onnxruntime session, shared by every thread that serves it.

onnxruntime's ``InferenceSession.run`` is thread-safe and releases the GIL, so one session per
model serves concurrent requests; each run uses the session's intra-op thread pool
(``threads``).  The same :func:`session_options` are what ``sealserve bench runtime`` gives
plain onnxruntime, so the two sides run with the same threads.

Errors here never carry anything from the plaintext (tensor names, shapes, node names): an
input that does not fit the model is one fixed :class:`ValueError`.

**What one request may take** (issue 10.5).  A small input can make a model allocate
gigabytes (a 0.6 MB MiniLM batch of 48 x 512 grew a runtime from 317 MB to 3.8 GB) and
compute long after its deadline.  :func:`configure_inference_memory` gives every session of
the process one onnxruntime arena with a hard cap (``max_mem``) for what runs allocate
(initializers stay outside it: they are charged to the model budget); a run that would pass it
fails and is refused as :class:`~sealserve.errors.MemoryBudgetExceeded`.  After every run the
arena gives back what it no longer holds (``memory.enable_memory_arena_shrinkage``), so a large
request does not keep its memory.  A run is stopped when its deadline passes
(:class:`~._watchdog.Watchdog` sets ``RunOptions.terminate``) and refused as
:class:`~sealserve.errors.DeadlineExceeded`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sealserve._log import get_logger
from sealserve.errors import DeadlineExceeded, MemoryBudgetExceeded, ModelNotAvailable
from sealserve.protocol import InputLimits
from sealserve.runtime._plaintext import PlaintextBuffer
from sealserve.runtime._watchdog import Watchdog

__all__ = [
    "BAD_INPUT",
    "LoadedModel",
    "OVER_LIMITS",
    "configure_inference_memory",
    "session_options",
]

_log = get_logger(__name__)
_WATCHDOG = Watchdog()
#: The cap of the process's inference arena, once :func:`configure_inference_memory` set it.
_ARENA_BYTES: int | None = None
_ARENA_LOCK = threading.Lock()


def configure_inference_memory(max_bytes: int) -> int:
    """Give the sessions of this process one arena of at most ``max_bytes`` for what their
    runs allocate; the cap in force (the first one: onnxruntime registers an allocator once per
    process).  Sessions built before this call do not use it."""
    import onnxruntime as ort

    global _ARENA_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1 << 20:
        raise ValueError(f"max_bytes must be an int >= 1 MiB, got {max_bytes!r}")
    with _ARENA_LOCK:
        if _ARENA_BYTES is None:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            # max_mem, then kSameAsRequested (grow by what is asked, no doubling past the cap)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(max_bytes, 1, -1, -1))
            _ARENA_BYTES = max_bytes
        return _ARENA_BYTES


#: The one message for an input that does not fit the model (says nothing about either).
BAD_INPUT: Final = "the input tensors do not match the model's inputs"
#: The one message for an input whose shapes are not the model's static shapes or are over the
#: maxima its owner declared (:class:`~sealserve.protocol.InputLimits`); names no shape.
OVER_LIMITS: Final = "the input tensors' shapes are not within the model's declared input limits"

_ORT_TYPES: Final[dict[str, np.dtype[Any]]] = {
    "tensor(float)": np.dtype("float32"),
    "tensor(double)": np.dtype("float64"),
    "tensor(float16)": np.dtype("float16"),
    "tensor(int64)": np.dtype("int64"),
    "tensor(int32)": np.dtype("int32"),
    "tensor(int16)": np.dtype("int16"),
    "tensor(int8)": np.dtype("int8"),
    "tensor(uint8)": np.dtype("uint8"),
    "tensor(uint16)": np.dtype("uint16"),
    "tensor(uint32)": np.dtype("uint32"),
    "tensor(uint64)": np.dtype("uint64"),
    "tensor(bool)": np.dtype("bool"),
}


def session_options(threads: int) -> Any:
    """onnxruntime session options with ``threads`` intra-op threads, one inter-op thread.

    The intra-op threads do not spin while waiting for work: a runtime holds several sessions
    and serves several requests on shared cores, and idle sessions whose threads spin take the
    cores from the one that runs (measured here: MobileNetV2 twice as slow next to a spinning
    idle session, and slower alone on a busy machine).
    """
    import onnxruntime as ort

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Fatal only, for the session and the process-wide logger: onnxruntime's errors and
    # warnings name the model's nodes and the input's shapes, and its log goes to stderr,
    # which the host reads.  The runtime logs the error's type instead.
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    if _ARENA_BYTES is not None:
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    return options


class LoadedModel:
    """A session built from a plaintext model, and what a request needs to feed it."""

    def __init__(
        self,
        *,
        model_id: str,
        version: int,
        session: Any,
        charged_bytes: int,
        model_bytes: int,
        limits: InputLimits | None = None,
    ) -> None:
        self.model_id = model_id
        self.version = version
        self.charged_bytes = charged_bytes
        self.model_bytes = model_bytes
        self._session: Any = session
        self._inputs: dict[str, np.dtype[Any] | None] = {
            meta.name: _ORT_TYPES.get(meta.type) for meta in session.get_inputs()
        }
        self._outputs = [meta.name for meta in session.get_outputs()]
        self._limits = limits if limits is not None else InputLimits(_input_shapes(session))

    @classmethod
    def build(
        cls,
        plaintext: PlaintextBuffer,
        *,
        model_id: str,
        version: int,
        threads: int,
        charged_bytes: int,
    ) -> LoadedModel:
        """Build the session from ``plaintext`` (filled), then wipe the plaintext."""
        import onnxruntime as ort

        try:
            data = plaintext.data
            try:
                session = ort.InferenceSession(
                    data, session_options(threads), providers=["CPUExecutionProvider"]
                )
            finally:
                del data
            # onnxruntime keeps the bytes only to rebuild the session on a provider fallback,
            # which never happens on the CPU provider; let go of them so they can be wiped.
            session._model_bytes = None
        except Exception as exc:
            _log.event("model.session_failed", level=logging.WARNING, model_id=model_id,
                       error=type(exc).__name__)  # fmt: skip
            raise ModelNotAvailable(
                f"model {model_id!r} does not load: it is not a model onnxruntime can run"
            ) from None
        finally:
            plaintext.wipe()
        try:
            limits = InputLimits.from_metadata(
                _input_shapes(session), session.get_modelmeta().custom_metadata_map
            )
        except Exception as exc:  # the owner's declaration: hostile, and its text stays inside
            _log.event("model.limits_malformed", level=logging.WARNING, model_id=model_id,
                       error=type(exc).__name__)  # fmt: skip
            raise ModelNotAvailable(
                f"model {model_id!r} does not load: its declared input limits are malformed"
            ) from None
        return cls(
            model_id=model_id,
            version=version,
            session=session,
            charged_bytes=charged_bytes,
            model_bytes=plaintext.size,
            limits=limits,
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], *, timeout_s: float | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        """Run the model on ``inputs`` (names and dtypes must be the model's), stopped after
        ``timeout_s`` (:class:`~sealserve.errors.DeadlineExceeded`); a run that needs more
        than the inference arena holds is :class:`~sealserve.errors.MemoryBudgetExceeded`."""
        import onnxruntime as ort

        session = self._session
        if session is None:
            raise ModelNotAvailable(f"model {self.model_id!r} was evicted")
        if set(inputs) != set(self._inputs):
            raise ValueError(BAD_INPUT)
        for name, array in inputs.items():
            want = self._inputs[name]
            if want is not None and array.dtype != want:
                raise ValueError(BAD_INPUT)
        # Before running: a small input must not make the model allocate what its owner did
        # not declare (issue 10.5).
        refusal = self._limits.refusal({name: array.shape for name, array in inputs.items()})
        if refusal is not None:
            raise ValueError(OVER_LIMITS if refusal == "limit" else BAD_INPUT)
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        try:
            with _WATCHDOG.watch(run_options, seconds=timeout_s) as stopped:
                outputs = session.run(None, dict(inputs), run_options)
        except Exception as exc:  # onnxruntime's messages name nodes and shapes: not for out
            reason = _failure(exc, stopped())
            _log.event("model.run_failed", level=logging.DEBUG, model_id=self.model_id,
                       error=type(exc).__name__, reason=reason)  # fmt: skip
            if reason == "deadline":
                raise DeadlineExceeded("the request's deadline passed during inference") from None
            if reason == "memory":
                raise MemoryBudgetExceeded(
                    "the inference needed more memory than the runtime's inference budget"
                ) from None
            raise ValueError(BAD_INPUT) from None
        return {
            name: np.ascontiguousarray(value)
            for name, value in zip(self._outputs, outputs, strict=True)
        }

    def close(self) -> None:
        """Drop the session (onnxruntime frees the weights)."""
        self._session = None

    def __repr__(self) -> str:
        return (
            f"LoadedModel(model_id={self.model_id!r}, version={self.version}, "
            f"charged_bytes={self.charged_bytes})"
        )


def _input_shapes(session: Any) -> dict[str, tuple[int | None, ...] | None]:
    """The model's input shapes as onnxruntime reads them: a size per static dimension,
    ``None`` per dynamic one; an input without a shape (onnxruntime gives ``[]``, as for a
    scalar) has no known rank."""
    shapes: dict[str, tuple[int | None, ...] | None] = {}
    for meta in session.get_inputs():
        dims = meta.shape
        if not dims:
            shapes[meta.name] = None
            continue
        shapes[meta.name] = tuple(d if isinstance(d, int) and d >= 1 else None for d in dims)
    return shapes


def _failure(exc: Exception, stopped: bool) -> str:
    """Why a run failed: ``deadline`` (the watchdog stopped it), ``memory`` (the arena's cap),
    else ``input``.  Only the kind leaves: the message names nodes and shapes."""
    if stopped:
        return "deadline"
    text = str(exc)
    if "Failed to allocate memory" in text or "Available memory of" in text:
        return "memory"
    return "input"
