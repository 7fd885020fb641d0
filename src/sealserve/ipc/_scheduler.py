"""The per-message scheduler: which path a ``send`` takes, from a cost model it keeps learning.

Pure decision logic: no I/O, no clock reads.  The publisher feeds it what it measured
(:meth:`Scheduler.observe_copy`, :meth:`Scheduler.observe_chunk`) and asks
(:meth:`Scheduler.decide`) for each message.

Cost model.  Each engine ``e`` copies ``n`` bytes in ``fixed_e + n / bw_e`` seconds, where
``fixed_e`` (hand-off, setup) and ``bw_e`` (bytes per second) are exponentially weighted
averages of its completion records; a pipelined message additionally pays ``chunk_s`` per
chunk (publishing progress and waking the reader).  With ``c`` the chunk size (an eighth of
the message, at least 64 KiB and at most a quarter of the consumer's private cache, so each
chunk is read while it is still hot):

* pipelining pays when the overlap it buys exceeds what its chunks cost:
  ``(n - c) / bw_inline > ceil(n / c) * chunk_s``;
* offloading pays (asynchronous sends only) when the copy the caller no longer waits for is
  several times the hand-off, ``fixed_inline + n / bw_inline >= gain * fixed_e``, and the
  engine is not already behind by more than that copy (``backlog / bw_e``).

Decisions, by QoS hint (payloads that already live in the arena always take ``loan``):

``latency``     pipelined when it pays (the reader starts on the first chunk), else inline;
``throughput``  offloaded when asynchronous and it pays (the caller prepares the next message
                while the engine copies), else pipelined when it pays, else inline;
``efficiency``  inline: one copy, one notification, the fewest cycles.

A ring more than ``high_occupancy`` full means the reader is behind: there is no reader to
overlap with, so the message is copied inline (or offloaded when asynchronous).  The
thresholds move with the measurements; the paper's were fixed.

Learning.  The model is a prior, not the last word: its guesses were wrong on a two-core
machine, where a helper thread shares the producer's core and a ring of messages in flight
already overlaps the reader with the writer.  So where more than one path can carry a
message (pipelining needs at least two chunks; offloading, an asynchronous send and an
engine) and the publisher passes the send's start time (``decide(now_ns=...)``), a
:class:`~sealserve.ipc._learner.PathLearner` measures the candidates on this machine, per
size class, hint, synchronous or not, and streaming or one at a time, and exploits the
cheapest (decisions say ``measured`` or ``measuring``).  The ``efficiency`` hint keeps its
one inline copy: it asks for the fewest cycles, not the fastest path.

``force=`` pins one path (where it applies) for characterization runs such as
``sealserve bench ipc``; the decisions then say so.

Notification.  Each decision also says how the publication wakes a reader that sleeps
(:class:`Notify`, with a :class:`NotifyReason`):

``wake``   wake every reader whose waiting flag is up, at once (``latency``, ``efficiency``);
``batch``  one wake-up per sleep (``throughput``, and any hint once the ring is more than
           ``high_occupancy`` full): a reader that went to sleep on the current data epoch
           (it drained the ring: empty -> non-empty) is woken; one that a wake-up is already
           on its way to is not woken again, so a burst rides on the first wake-up.

Neither ever loses a wake-up: a reader that sleeps on the current epoch is always woken (and a
flush or a close wakes every flagged reader whatever the policy).  Whether a wake-up is
needed at all is only known at publication (a reader that is spinning or busy has no flag
up): the ring counts each publication's outcome by policy, ``woken``, ``coalesced`` (batch:
a wake-up was already on its way) or ``none-needed`` (no reader asleep).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

from sealserve.ipc._learner import Context, PathLearner
from sealserve.ipc._notify import QoS

__all__ = ["Decision", "EngineModel", "Notify", "NotifyReason", "Path", "Reason", "Scheduler"]

_KIB = 1 << 10
_MIB = 1 << 20


class Path(enum.Enum):
    """How one message reaches shared memory."""

    INLINE = "inline"  # the caller copies, then publishes
    LOAN = "loan"  # the payload is already in the arena: publish, no copy
    OFFLOAD = "offload"  # an asynchronous engine copies; published when done
    PIPELINED = "pipelined"  # published at once; readable chunk by chunk as copied


class Reason(enum.Enum):
    """Why the scheduler chose a path (``Scheduler.explain`` spells it out)."""

    IN_ARENA = "payload already in the arena"
    SMALL = "below every threshold: an inline copy is cheapest"
    EFFICIENCY = "efficiency hint: one inline copy costs the fewest cycles"
    PIPELINING_PAYS = "pipelining pays: the reader overlaps with the copy"
    OFFLOAD_PAYS = "offload pays: the caller is free while the engine copies"
    OCCUPANCY_HIGH = "ring nearly full: the reader is behind, nothing to overlap with"
    ENGINE_BEHIND = "the offload engine is behind; copying inline"
    NO_GAIN = "no path beats an inline copy at this size"
    FORCED = "path pinned by the scheduler's force= option"
    MEASURED = "measured fastest on this machine for this size, hint and regime"
    MEASURING = "measuring the candidate paths (a probe block)"


class Notify(enum.Enum):
    """How a publication wakes a reader that sleeps (see the module docstring)."""

    WAKE = "wake"  # wake every flagged reader now
    BATCH = "batch"  # one wake-up per sleep: only a reader asleep on the current epoch


class NotifyReason(enum.Enum):
    """Why the scheduler chose a notification policy."""

    LATENCY = "latency hint: wake a sleeping reader at once"
    EFFICIENCY = "efficiency hint: the reader blocks; wake it at once"
    THROUGHPUT = "throughput hint: one wake-up per empty -> non-empty; a burst rides on it"
    OCCUPANCY_HIGH = "ring nearly full: the reader is behind, awake or being woken"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    path: Path
    engine: str
    chunk_bytes: int
    reason: Reason
    notify: Notify = Notify.WAKE
    notify_reason: NotifyReason = NotifyReason.LATENCY


@dataclasses.dataclass(slots=True)
class EngineModel:
    """What the scheduler believes an engine costs: ``fixed_s + n / bytes_per_s``."""

    name: str
    asynchronous: bool
    kind: str
    fixed_s: float
    bytes_per_s: float
    samples: int = 0

    def predict_s(self, nbytes: int, backlog_bytes: int = 0) -> float:
        return self.fixed_s + (nbytes + backlog_bytes) / self.bytes_per_s


class Scheduler:
    """Chooses a path per message and adapts its thresholds from measurements."""

    def __init__(
        self,
        *,
        cache_bytes: int = _MIB,
        min_chunk_bytes: int = 64 * _KIB,
        high_occupancy: float = 0.75,
        offload_gain: float = 4.0,
        alpha: float = 0.2,
        inline_bytes_per_s: float = 8e9,
        inline_fixed_s: float = 1e-6,
        chunk_s: float = 4e-6,
        force: Path | None = None,
        learner: PathLearner | None = None,
    ) -> None:
        if cache_bytes < 4 * _KIB:
            raise ValueError(f"cache_bytes must be >= 4096, got {cache_bytes!r}")
        if min_chunk_bytes < 4 * _KIB or min_chunk_bytes % (4 * _KIB):
            raise ValueError(f"min_chunk_bytes must be a multiple of 4096, got {min_chunk_bytes!r}")
        if not 0 < high_occupancy <= 1:
            raise ValueError(f"high_occupancy must be within (0, 1], got {high_occupancy!r}")
        if offload_gain < 1:
            raise ValueError(f"offload_gain must be >= 1, got {offload_gain!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be within (0, 1], got {alpha!r}")
        if inline_bytes_per_s <= 0 or inline_fixed_s < 0 or chunk_s < 0:
            raise ValueError("inline_bytes_per_s must be > 0; inline_fixed_s, chunk_s >= 0")
        if force is not None and not isinstance(force, Path):
            raise TypeError(f"force must be a Path or None, got {force!r}")
        self.force = force
        #: What each path was measured to cost, per context (``decide(now_ns=...)``).
        self.learner = learner if learner is not None else PathLearner()
        self._learned: dict[tuple[Path, str, int, Reason, Notify], Decision] = {}
        self.cache_bytes = cache_bytes
        self.min_chunk_bytes = min_chunk_bytes
        self.max_chunk_bytes = max(min_chunk_bytes, cache_bytes // 4 // (4 * _KIB) * 4 * _KIB)
        self.high_occupancy = high_occupancy
        self.offload_gain = offload_gain
        self.alpha = alpha
        self.chunk_s = chunk_s
        self.chunk_samples = 0
        self.inline = EngineModel(
            name="inline",
            asynchronous=False,
            kind="inline",
            fixed_s=inline_fixed_s,
            bytes_per_s=inline_bytes_per_s,
        )
        self.engines: dict[str, EngineModel] = {}
        #: Decisions so far, by path (read through ``snapshot()``).
        self.counts: dict[Path, int] = dict.fromkeys(Path, 0)
        #: Notification policies chosen so far (``decide`` and ``notify_for``).
        self.notify_counts: dict[Notify, int] = dict.fromkeys(Notify, 0)
        self.recent: collections.deque[tuple[int, QoS, Decision]] = collections.deque(maxlen=16)
        self._small_bytes = 0
        self._refresh()

    # -- engines and measurements -----------------------------------------------------------

    def register_engine(
        self,
        name: str,
        *,
        asynchronous: bool,
        kind: str = "thread",
        fixed_s: float = 30e-6,
        bytes_per_s: float = 6e9,
    ) -> None:
        """Make an engine eligible; ``kind`` is ``thread`` or ``device``."""
        if name == "inline" or name in self.engines:
            raise ValueError(f"an engine named {name!r} is already registered")
        if kind not in ("thread", "device"):
            raise ValueError(f"kind must be 'thread' or 'device', got {kind!r}")
        if fixed_s < 0 or bytes_per_s <= 0:
            raise ValueError("fixed_s must be >= 0 and bytes_per_s > 0")
        self.engines[name] = EngineModel(
            name=name,
            asynchronous=asynchronous,
            kind=kind,
            fixed_s=fixed_s,
            bytes_per_s=bytes_per_s,
        )
        self._refresh()

    def observe_copy(
        self, engine: str, *, nbytes: int, seconds: float, queued_s: float = 0.0
    ) -> None:
        """Fold one completion record (or a timed inline copy) into the engine's model."""
        model = self.inline if engine == "inline" else self.engines.get(engine)
        if model is None or seconds <= 0 or nbytes <= 0:
            return
        a = self.alpha
        if queued_s > 0:
            model.fixed_s += a * (queued_s - model.fixed_s)
        if nbytes >= 64 * _KIB:
            bw = nbytes / seconds
            model.bytes_per_s += a * (bw - model.bytes_per_s)
        elif engine == "inline":
            model.fixed_s += a * (max(seconds - nbytes / model.bytes_per_s, 0.0) - model.fixed_s)
        model.samples += 1
        if model.samples % 8 == 0:
            self._refresh()

    def observe_chunk(self, seconds: float) -> None:
        """Fold the measured cost of publishing one chunk of a pipelined message."""
        if seconds <= 0:
            return
        self.chunk_s += self.alpha * (seconds - self.chunk_s)
        self.chunk_samples += 1
        if self.chunk_samples % 8 == 0:
            self._refresh()

    # -- decisions ---------------------------------------------------------------------------

    def chunk_bytes_for(self, nbytes: int) -> int:
        chunk = nbytes // 8 // (4 * _KIB) * (4 * _KIB)
        return min(max(chunk, self.min_chunk_bytes), self.max_chunk_bytes)

    def pipelining_pays(self, nbytes: int) -> bool:
        c = self.chunk_bytes_for(nbytes)
        if nbytes < 2 * c:
            return False
        gain = (nbytes - c) / self.inline.bytes_per_s
        return gain > math.ceil(nbytes / c) * self.chunk_s

    def offload_pays(self, engine: EngineModel, nbytes: int, backlog_bytes: int) -> bool:
        inline_s = self.inline.predict_s(nbytes)
        return inline_s >= self.offload_gain * engine.fixed_s and (
            backlog_bytes / engine.bytes_per_s <= inline_s
        )

    def decide(
        self,
        *,
        nbytes: int,
        qos: QoS,
        occupancy: float = 0.0,
        in_arena: bool = False,
        asynchronous: bool = False,
        backlog: Mapping[str, int] | None = None,
        now_ns: int | None = None,
    ) -> Decision:
        """The path and the notification policy for one message of ``nbytes`` under ``qos``.

        ``now_ns`` (a monotonic clock in nanoseconds, read as the send starts) turns on
        learning: where more than one path could carry the message, the learner measures
        them (the time from one send to the next, per byte) and picks the cheapest on this
        machine; the cost model's choice is where it starts.  Without it, the model decides.
        """
        high = occupancy >= self.high_occupancy
        if in_arena:
            decision = _LOAN[qos, high]
        elif self.force is not None:
            decision = self._forced(nbytes, asynchronous, qos, high)
        elif nbytes < self._small_bytes:
            decision = _SMALL[qos, high]
        else:
            decision = self._decide_large(nbytes, qos, occupancy, asynchronous, backlog or {})
            if now_ns is not None and qos is not QoS.EFFICIENCY:
                decision = self._learn(
                    decision, nbytes, qos, occupancy, asynchronous, backlog or {}, now_ns
                )
        self.counts[decision.path] += 1
        self.notify_counts[decision.notify] += 1
        if nbytes >= self._small_bytes:
            self.recent.append((nbytes, qos, decision))
        return decision

    def notify_for(self, qos: QoS, occupancy: float = 0.0) -> Notify:
        """The notification policy alone (a loan committed without a ``send``); counted."""
        notify = _NOTIFY[qos, occupancy >= self.high_occupancy][0]
        self.notify_counts[notify] += 1
        return notify

    def loan_table(self, qos: QoS, capacity: int) -> tuple[tuple[bool, bool], int]:
        """For a publisher's loans under its default hint, decided without a call per loan:
        whether a commit batches its wake-up, by (ring nearly full), and the number of
        messages in flight from which the ring counts as nearly full.  Same policy as
        :meth:`notify_for`; the publisher reports its tallies with :meth:`count_notify`."""
        table = (
            _NOTIFY[qos, False][0] is Notify.BATCH,
            _NOTIFY[qos, True][0] is Notify.BATCH,
        )
        return table, math.ceil(self.high_occupancy * capacity)

    def count_notify(self, *, wake: int, batch: int) -> None:
        """Add notification choices a publisher tallied itself (its default-hint loans)."""
        self.notify_counts[Notify.WAKE] += wake
        self.notify_counts[Notify.BATCH] += batch

    def _learn(
        self,
        prior: Decision,
        nbytes: int,
        qos: QoS,
        occupancy: float,
        asynchronous: bool,
        backlog: Mapping[str, int],
        now_ns: int,
    ) -> Decision:
        """The learner's path among the candidates for this message's context."""
        offload = self._offload_engine() if asynchronous else None
        candidates = ["inline"]
        chunk = self.chunk_bytes_for(nbytes)
        if nbytes >= 2 * chunk:
            candidates.append("pipelined")
        # From the same size as pipelining (not from the engine's measured break-even, which
        # moves with every measurement): a context's candidates then stay the same.
        if offload is not None and nbytes >= 2 * self.min_chunk_bytes:
            candidates.append("offload")
        if len(candidates) == 1:
            return prior
        context = Context(nbytes.bit_length(), qos, asynchronous, occupancy > 0)
        pending_s = 0.0
        for name, queued in backlog.items():
            model = self.engines.get(name)
            if queued and model is not None:
                pending_s += model.fixed_s + queued / model.bytes_per_s
        path_name, measuring = self.learner.choose(
            context, tuple(candidates), prior.path.value, nbytes, now_ns, int(pending_s * 1e9)
        )
        path = Path(path_name)
        reason = Reason.MEASURING if measuring else Reason.MEASURED
        if path is Path.INLINE:
            engine, chunk = "inline", 0
        elif path is Path.PIPELINED:
            engine = offload.name if offload is not None else "inline"
        else:
            assert offload is not None
            engine, chunk = offload.name, 0
        key = (path, engine, chunk, reason, prior.notify)
        decision = self._learned.get(key)
        if decision is None:
            decision = self._learned[key] = Decision(
                path, engine, chunk, reason, prior.notify, prior.notify_reason
            )
        return decision

    def _offload_engine(self) -> EngineModel | None:
        """The asynchronous engine offloads go to (a device engine before a thread)."""
        offload: EngineModel | None = None
        for model in self.engines.values():
            if model.asynchronous and (offload is None or model.kind == "device"):
                offload = model
        return offload

    def _forced(self, nbytes: int, asynchronous: bool, qos: QoS, high: bool) -> Decision:
        """The pinned path where it applies (characterization runs), else inline."""
        force = self.force
        notify, why = _NOTIFY[qos, high]
        if force is Path.PIPELINED:
            engine = "inline"
            if asynchronous:
                engine = next((m.name for m in self.engines.values() if m.asynchronous), engine)
            return Decision(
                Path.PIPELINED, engine, self.chunk_bytes_for(nbytes), Reason.FORCED, notify, why
            )
        if force is Path.OFFLOAD:
            for model in self.engines.values():
                if model.asynchronous:
                    return Decision(Path.OFFLOAD, model.name, 0, Reason.FORCED, notify, why)
        return _FORCED_INLINE[qos, high]

    def _decide_large(
        self,
        nbytes: int,
        qos: QoS,
        occupancy: float,
        asynchronous: bool,
        backlog: Mapping[str, int],
    ) -> Decision:
        d = self._decide_path(nbytes, qos, occupancy, asynchronous, backlog)
        notify, why = _NOTIFY[qos, occupancy >= self.high_occupancy]
        return Decision(d.path, d.engine, d.chunk_bytes, d.reason, notify, why)

    def _decide_path(
        self,
        nbytes: int,
        qos: QoS,
        occupancy: float,
        asynchronous: bool,
        backlog: Mapping[str, int],
    ) -> Decision:
        """The path for a message above the small-message threshold (notify: the default)."""
        if qos is QoS.EFFICIENCY:
            return Decision(Path.INLINE, "inline", 0, Reason.EFFICIENCY)
        offload = self._offload_engine() if asynchronous else None
        wants_offload = offload is not None and (
            qos is QoS.THROUGHPUT or occupancy >= self.high_occupancy
        )
        if wants_offload and offload is not None:
            behind = backlog.get(offload.name, 0)
            if self.offload_pays(offload, nbytes, behind):
                return Decision(Path.OFFLOAD, offload.name, 0, Reason.OFFLOAD_PAYS)
            if occupancy < self.high_occupancy and not self.pipelining_pays(nbytes):
                return Decision(Path.INLINE, "inline", 0, Reason.ENGINE_BEHIND)
        if occupancy >= self.high_occupancy:
            return Decision(Path.INLINE, "inline", 0, Reason.OCCUPANCY_HIGH)
        if self.pipelining_pays(nbytes):
            engine = offload.name if asynchronous and offload is not None else "inline"
            return Decision(
                Path.PIPELINED, engine, self.chunk_bytes_for(nbytes), Reason.PIPELINING_PAYS
            )
        return Decision(Path.INLINE, "inline", 0, Reason.NO_GAIN)

    @property
    def small_bytes(self) -> int:
        """Below this size every message is copied inline (no decision to make)."""
        return 0 if self.force is not None else self._small_bytes

    # -- explanation ---------------------------------------------------------------------------

    @property
    def pipeline_min_bytes(self) -> int | None:
        """The smallest size at which pipelining pays under the current model."""
        return _smallest(self.pipelining_pays)

    def offload_min_bytes(self, engine: str) -> int | None:
        """The smallest size at which offloading to ``engine`` pays (idle engine)."""
        model = self.engines.get(engine)
        if model is None:
            return None
        return _smallest(lambda n: self.offload_pays(model, n, 0))

    def snapshot(self) -> dict[str, Any]:
        """The model, the thresholds it implies, and what was decided: for ``stats()``."""
        models = [self.inline, *self.engines.values()]
        return {
            "force": None if self.force is None else self.force.value,
            "model": {
                m.name: {
                    "kind": m.kind,
                    "fixed_us": round(m.fixed_s * 1e6, 2),
                    "gb_per_s": round(m.bytes_per_s / 1e9, 2),
                    "samples": m.samples,
                }
                for m in models
            },
            "chunk_overhead_us": round(self.chunk_s * 1e6, 2),
            "thresholds": {
                "pipelined_from_bytes": self.pipeline_min_bytes,
                **{
                    f"offload_to_{name}_from_bytes": self.offload_min_bytes(name)
                    for name in self.engines
                },
                "chunk_bytes_range": [self.min_chunk_bytes, self.max_chunk_bytes],
                "high_occupancy": self.high_occupancy,
            },
            "decisions": {path.value: n for path, n in self.counts.items() if n},
            "learned": self.learner.snapshot(),
            "notify": {
                "policy": {
                    f"{q.value}{' (ring nearly full)' if high else ''}": f"{n.value}: {why.value}"
                    for (q, high), (n, why) in _NOTIFY.items()
                },
                "decisions": {n.value: c for n, c in self.notify_counts.items() if c},
            },
            "recent": [
                {
                    "bytes": n,
                    "qos": q.value,
                    "path": d.path.value,
                    "why": d.reason.value,
                    "notify": d.notify.value,
                    "notify_why": d.notify_reason.value,
                }
                for n, q, d in self.recent
            ],
        }

    def _refresh(self) -> None:
        # Below the smallest size where a second path could carry a message at all, there
        # is nothing to decide: two chunks for pipelining, a copy at least as long as an
        # engine's hand-off for offloading.  Above it the model proposes and, given the
        # time, the learner measures.
        floors = [2 * self.min_chunk_bytes]
        floors += [self._offload_floor(m) for m in self.engines.values() if m.asynchronous]
        self._small_bytes = min(floors)

    def _offload_floor(self, engine: EngineModel) -> int:
        """The smallest message whose inline copy takes as long as ``engine``'s hand-off."""
        gap_s = engine.fixed_s - self.inline.fixed_s
        return max(int(gap_s * self.inline.bytes_per_s), 1)


def _notify_policy(qos: QoS, high: bool) -> tuple[Notify, NotifyReason]:
    if high:
        return Notify.BATCH, NotifyReason.OCCUPANCY_HIGH
    if qos is QoS.THROUGHPUT:
        return Notify.BATCH, NotifyReason.THROUGHPUT
    if qos is QoS.EFFICIENCY:
        return Notify.WAKE, NotifyReason.EFFICIENCY
    return Notify.WAKE, NotifyReason.LATENCY


#: (hint, ring nearly full) -> notification policy and why: a table, so that the hot path
#: allocates nothing.
_NOTIFY = {(q, high): _notify_policy(q, high) for q in QoS for high in (False, True)}


def _fixed(path: Path, engine: str, reason: Reason) -> dict[tuple[QoS, bool], Decision]:
    """One shared decision per (hint, ring nearly full) for the paths that need no sizing."""
    return {key: Decision(path, engine, 0, reason, *policy) for key, policy in _NOTIFY.items()}


_LOAN = _fixed(Path.LOAN, "none", Reason.IN_ARENA)
_FORCED_INLINE = _fixed(Path.INLINE, "inline", Reason.FORCED)
_SMALL = _fixed(Path.INLINE, "inline", Reason.SMALL)


def _smallest(pays: Any) -> int | None:
    """Smallest ``n`` in [4 KiB, 64 GiB] with ``pays(n)``, to 1/16 precision; else None."""
    lo, hi = 4 * _KIB, 64 << 30
    if not pays(hi):
        return None
    # coarse: powers of two, then refine between the last miss and the first hit
    n = lo
    while n < hi and not pays(n):
        n *= 2
    if n == lo:
        return lo
    low = n // 2
    step = max((n - low) // 16, 1)
    m = low
    while m < n and not pays(m):
        m += step
    return m
