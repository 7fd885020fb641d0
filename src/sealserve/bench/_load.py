"""A steady mixed load through a gateway, and what happened to every request.

:func:`mlp_model` writes small multi-layer perceptrons in ONNX (three sizes: their weights are
a few KB to about 10 MB); :class:`SteadyLoad` runs ``concurrency`` client threads, each with its
own :class:`~sealserve.client.GatewayClient`, sending requests of several users for several
models and input sizes in turn, as fast as they are answered.  A request is sent again (same
request id, sealed afresh) while its failure is retryable, for at most ``retry_window_s``, as a
patient client would; then it is one :class:`Record`:

* ``ok`` — answered, and its output unseals to what plain onnxruntime computes;
* ``retryable`` — still failing retryably when the client gave up (a refused connection, a
  503, a deadline);
* ``failed`` — a non-retryable error (the model is gone, access denied);
* ``lost`` — no answer at all by the deadline and its grace (the request vanished), or an
  answer that does not unseal to the right output.  A correct system loses nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from sealserve.crypto import RequestKey
from sealserve.errors import SealserveError

__all__ = ["Job", "Record", "SteadyLoad", "mlp_model", "plain_outputs", "summarize"]

#: model name -> (inputs, hidden width, hidden layers)
SIZES: Final = {"small": (64, 64, 1), "medium": (256, 512, 2), "large": (1024, 1024, 3)}
_RETRY_PAUSE_S: Final = 0.25


def mlp_model(seed: int, *, inputs: int, hidden: int, layers: int, outputs: int = 10) -> bytes:
    """A dense network: ``layers`` Gemm+Relu of width ``hidden``, then a Gemm to ``outputs``."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev, width = "X", inputs
    for i, out_width in enumerate([hidden] * layers + [outputs]):
        w = (rng.standard_normal((width, out_width)) / np.sqrt(width)).astype(np.float32)
        b = rng.standard_normal((out_width,)).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == layers
        gemm = "Y" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm], [f"r{i}"]))
            prev = f"r{i}"
        width = out_width
    graph = helper.make_graph(
        nodes,
        f"mlp-{seed}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, inputs])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, outputs])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def plain_outputs(onnx_bytes: bytes, inputs: dict[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """What plain onnxruntime computes (the reference every answer is checked against)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["Y"], inputs)[0])


@dataclasses.dataclass(frozen=True)
class Job:
    """One kind of request: a user's request for a model with one input and its answer."""

    model_id: str
    user_id: str
    key: RequestKey
    inputs: dict[str, npt.NDArray[Any]]
    expected: npt.NDArray[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    sent: float
    done: float
    outcome: str
    attempts: int
    model_id: str
    error: str = ""


class SteadyLoad:
    """Client threads sending ``jobs`` in turn through the gateway at ``url`` (see the module
    docstring); :meth:`records` is everything answered so far."""

    def __init__(
        self,
        url: str,
        jobs: Sequence[Job],
        *,
        concurrency: int = 6,
        deadline_s: float = 30.0,
        retry_window_s: float = 20.0,
        pause_s: float = 0.0,
        keep: int | None = None,
    ) -> None:
        if not jobs:
            raise ValueError("jobs must not be empty")
        self.url = url
        self.jobs = list(jobs)
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.retry_window_s = retry_window_s
        self.pause_s = pause_s
        # A long run keeps the last ``keep`` records and counts the rest (a soak must not
        # grow because of what it measures).
        self._records: collections.deque[Record] = collections.deque(maxlen=keep)
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._turn = itertools.count()
        self.in_flight = 0

    def start(self) -> SteadyLoad:
        self._stop.clear()
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, *, timeout_s: float | None = None) -> None:
        """Stop sending; wait for the requests in flight (they end by their deadline)."""
        self._stop.set()
        bound = timeout_s if timeout_s is not None else self.deadline_s + self.retry_window_s + 10
        end = time.monotonic() + bound
        for thread in self._threads:
            thread.join(max(0.1, end - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def records(self, since: float = 0.0) -> list[Record]:
        with self._lock:
            return [r for r in self._records if r.done >= since]

    def _run(self) -> None:
        from sealserve.client import GatewayClient

        with GatewayClient(self.url, timeout_s=self.deadline_s) as client:
            while not self._stop.is_set():
                job = self.jobs[next(self._turn) % len(self.jobs)]
                with self._lock:
                    self.in_flight += 1
                try:
                    record = self._one(client, job)
                finally:
                    with self._lock:
                        self.in_flight -= 1
                with self._lock:
                    self._records.append(record)
                    self.counts[record.outcome] += 1
                    if record.attempts > 1:
                        self.counts["retried"] += 1
                    if record.error:
                        self.counts[f"error:{record.error}"] += 1
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def _one(self, client: Any, job: Job) -> Record:
        from sealserve.protocol import new_request_id

        rid = new_request_id()
        sent = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                result = client.infer(
                    job.model_id, job.inputs, user_id=job.user_id, key=job.key, request_id=rid
                )
            except SealserveError as exc:
                now = time.monotonic()
                if isinstance(exc.__context__, httpx.TimeoutException):
                    return Record(sent, now, "lost", attempts, job.model_id, "no answer")
                if exc.retryable and now - sent < self.retry_window_s and not self._stop.is_set():
                    time.sleep(_RETRY_PAUSE_S)
                    continue
                outcome = "retryable" if exc.retryable else "failed"
                return Record(sent, now, outcome, attempts, job.model_id, type(exc).__name__)
            except Exception as exc:  # an answer the client could not even read: lost
                return Record(sent, time.monotonic(), "lost", attempts, job.model_id, repr(exc))
            done = time.monotonic()
            output = np.asarray(result.outputs["Y"])
            if output.shape != job.expected.shape or not np.allclose(
                output, job.expected, rtol=1e-4, atol=1e-4
            ):
                return Record(sent, done, "lost", attempts, job.model_id, "wrong output")
            return Record(sent, done, "ok", attempts, job.model_id)


def summarize(
    records: Sequence[Record], *, since: float, until: float, before_s: float = 3.0
) -> dict[str, Any]:
    """Counts by outcome of the requests answered in [since, until], and the recovery time.

    The recovery time is how long after ``since`` (the fault) the load was back: the first
    success after the last failure that opens a second-long window whose successes reach half
    the rate of the ``before_s`` seconds before the fault; ``None`` if that never happened.
    """
    window = [r for r in records if since <= r.done <= until]
    counts = {k: sum(1 for r in window if r.outcome == k) for k in
              ("ok", "retryable", "failed", "lost")}  # fmt: skip
    ok_times = sorted(r.done for r in records if r.outcome == "ok")
    rate = sum(1 for t in ok_times if since - before_s <= t < since) / before_s
    bad = [r.done for r in window if r.outcome != "ok"]
    start = max(bad) if bad else since
    recovery: float | None = None
    for t in (x for x in ok_times if start <= x and x + 1.0 <= until + 1e-9):
        # A window opens at a success: one that opened earlier would count the silence
        # before the load came back as part of the recovery.
        got = sum(1 for x in ok_times if t <= x < t + 1.0)
        if got >= max(1.0, 0.5 * rate):
            recovery = max(0.0, t - since)
            break
    errors: dict[str, int] = {}
    for r in window:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        **counts,
        "requests": len(window),
        "recovery_s": None if recovery is None else round(recovery, 1),
        "retried": sum(1 for r in window if r.attempts > 1),
        "rate_before_per_s": round(rate, 1),
        "errors": errors,
    }
