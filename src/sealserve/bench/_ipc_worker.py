"""The two processes of ``sealserve bench ipc``: a producer and a consumer, each on its own core.

The parent sends each worker one case at a time over a pipe; the two workers meet through
the transport under test (and a small shared array, ``ack``, that paces the latency phase
identically for every transport).  A case has two phases:

* latency: one message in flight; the producer sends the next one once the consumer has
  checked the previous one (and said so in ``ack``) and a pause of ``gap_us`` has passed, so
  that a consumer that blocks is asleep when the message comes, as it is between requests.
  The consumer records, per message, the time from the producer starting to write it to the
  consumer having checked it (the pause is not part of it);
* throughput: after a warm-up of two ring lengths, the producer streams for a time budget;
  both sides record their CPU time, the consumer when it finished the last message.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from pathlib import Path
from typing import Any

from sealserve.bench._ipc_transports import END, make_consumer, make_producer

__all__ = ["worker_main"]


def worker_main(role: str, conn: Any, ack: Any, queue: Any, cpu: int | None) -> None:
    """Entry point of a worker process: run cases until told to stop."""
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    while True:
        case = conn.recv()
        if case is None:
            return
        try:
            if role == "producer":
                result = _produce(case, ack, queue)
            else:
                result = _consume(case, ack, queue)
            conn.send(("ok", result))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _wait_ack(ack: Any, value: int, timeout: float = 60.0) -> None:
    """Wait for the consumer's acknowledgement, yielding the CPU and the GIL on every turn.

    Yielding matters: a transport may need a Python thread of the producer to move the
    message (the offload engine, multiprocessing's feeder thread), which a loop holding the
    GIL would starve for a whole switch interval (5 ms).  The wait lies outside the measured
    window: the consumer takes its timestamp before it acknowledges.
    """
    deadline = time.monotonic() + timeout
    spins = 0
    while ack[0] != value:
        os.sched_yield()
        spins += 1
        if spins & 0xFFFF == 0 and time.monotonic() > deadline:
            raise TimeoutError(f"consumer did not acknowledge {value} (at {ack[0]})")


def _pause(ns: int) -> None:
    if ns <= 0:
        return
    until = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < until:
        pass


def _produce(case: dict[str, Any], ack: Any, queue: Any) -> dict[str, Any]:
    size, depth, where = case["size"], case["depth"], Path(case["where"])
    gap_ns = int(case["gap_us"] * 1000)
    producer = make_producer(case["transport"], size, depth, where, queue=queue)
    try:
        seq = 0
        start = time.perf_counter()
        n = 0
        while n < case["lat_min"] or (
            time.perf_counter() - start < case["lat_budget_s"] and n < case["lat_max"]
        ):
            _pause(gap_ns)
            producer.send(seq)
            seq += 1
            n += 1
            _wait_ack(ack, seq)
        producer.send(END)
        _wait_ack(ack, END)
        warm = case["warmup"]
        for _ in range(warm):
            producer.send(seq)
            seq += 1
        _wait_ack(ack, seq)
        cpu0 = time.process_time()
        t0 = time.perf_counter_ns()
        budget_ns = int(case["tp_budget_s"] * 1e9)
        count = 0
        while count < case["tp_min"] or (
            time.perf_counter_ns() - t0 < budget_ns and count < case["tp_max"]
        ):
            producer.send(seq)
            seq += 1
            count += 1
        producer.flush()
        cpu = time.process_time() - cpu0
        producer.send(END)
        _wait_ack(ack, END)
        return {"tp_start_ns": t0, "tp_count": count, "tp_cpu_s": cpu, "report": producer.report()}
    finally:
        producer.close()


def _consume(case: dict[str, Any], ack: Any, queue: Any) -> dict[str, Any]:
    size, depth, where = case["size"], case["depth"], Path(case["where"])
    consumer = make_consumer(case["transport"], size, depth, where, queue=queue)
    try:
        latencies: list[int] = []
        skip = case["lat_warmup"]
        while True:
            seq, sent = consumer.receive()
            done = time.perf_counter_ns()
            if seq == END:
                ack[0] = END
                break
            if seq >= skip:
                latencies.append(done - sent)
            ack[0] = seq + 1
        warm = case["warmup"]
        cpu0 = cpu1 = 0.0
        last_done = 0
        count = 0
        while True:
            seq, _ = consumer.receive()
            if seq == END:
                ack[0] = END
                break
            if warm:
                warm -= 1
                if not warm:
                    cpu0 = time.process_time()
            else:
                count += 1
                last_done = time.perf_counter_ns()
                cpu1 = time.process_time()
            ack[0] = seq + 1
        return {
            "latencies_ns": latencies,
            "tp_end_ns": last_done,
            "tp_count": count,
            "tp_cpu_s": cpu1 - cpu0,
        }
    finally:
        consumer.close()
