"""Which send path is fastest on this machine, learned by trying them: explore, exploit, re-probe.

Pure logic, as the rest of the scheduler: no I/O and no clock reads.  The publisher passes the
time at which each ``send`` starts; the learner does the rest.

What it measures.  For each *context* (a size class, a power of two; the QoS hint; whether
the send is asynchronous; and whether messages were in flight when it started: ``streaming``
or ``one at a time``) it sends blocks of a few consecutive messages down one candidate path
and times each block from its first send to the first send after it, per byte.  That interval
holds everything the path costs the caller: the copy, the hand-off, waiting for room when the
reader is the bottleneck (streaming), and the reader's work until it answers when the caller
waits for an answer (one at a time, as between requests).  So the cheapest path per byte is
the one with the most throughput when streaming and the lowest latency one at a time.

How it decides.  A context starts on the cost model's choice (the *prior*), tries it and
every other candidate twice each, interleaved, and takes the one whose median block cost is
lowest (a challenger must beat the incumbent by ``margin``).  It then exploits that
path for ``first_exploit`` blocks and probes each other candidate once more (one block each,
plus a fresh block of the incumbent); when the probe confirms the choice the exploit period
doubles, up to ``max_exploit`` blocks, so that a settled context spends under one block in
a hundred on the slower paths; when it overturns it, the period starts again.  An interval
longer than ``idle_ns`` between two sends of a context (the caller went idle) is left out:
it measured the caller, not the path.  A block is also charged the work it left to the
asynchronous engines (their backlog at their measured speed), so an offload that returns at
once but piles up copies is not mistaken for a cheap one.  Costs keep the last ``window``
blocks per path.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
from typing import Any

from sealserve.ipc._notify import QoS

__all__ = ["Context", "PathLearner", "explain"]


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What a message's best path may depend on (the key of what is learned)."""

    size_class: int  # nbytes.bit_length(): messages of [2**(k-1), 2**k) bytes share one
    qos: QoS
    asynchronous: bool
    streaming: bool  # messages were in flight when this one was sent

    def describe(self) -> dict[str, Any]:
        low = 1 << max(self.size_class - 1, 0)
        return {
            "bytes": [low, (1 << self.size_class) - 1],
            "qos": self.qos.value,
            "asynchronous": self.asynchronous,
            "regime": "streaming" if self.streaming else "one at a time",
        }


class _Arm:
    """One candidate path of one context: its recent block costs (ns per byte)."""

    __slots__ = ("blocks", "costs", "messages")

    def __init__(self, window: int) -> None:
        self.costs: collections.deque[float] = collections.deque(maxlen=window)
        self.blocks = 0
        self.messages = 0

    def estimate(self) -> float | None:
        return statistics.median(self.costs) if self.costs else None


class _State:
    """The learning state of one context."""

    __slots__ = (
        "arms",
        "basis",
        "best",
        "block_bytes",
        "block_elapsed",
        "block_left",
        "block_path",
        "block_pending",
        "candidates",
        "exploit",
        "last_bytes",
        "last_ns",
        "period",
        "plan",
        "prior",
        "probes",
        "round_open",
        "switches",
    )

    def __init__(self, candidates: tuple[str, ...], prior: str, window: int) -> None:
        self.candidates = candidates
        self.prior = prior
        self.best = prior
        self.arms = {c: _Arm(window) for c in candidates}
        self.basis: dict[str, float] = {}  # each path's cost (ns per byte) at the last decision
        others = [c for c in candidates if c != prior]
        # The first round: the prior and every other candidate, twice each, interleaved.
        self.plan: collections.deque[str] = collections.deque([prior, *others] * 2)
        self.round_open = True
        self.block_path = prior
        self.block_left = 0
        self.block_bytes = 0  # bytes of the block's messages whose interval was measured
        self.block_elapsed = 0  # the sum of those intervals
        self.block_pending = 0  # the engines' pending work when the block began
        self.last_ns = -1
        self.last_bytes = 0
        self.exploit = 0  # exploit blocks left before the next probe round
        self.period = 0  # the current exploit period, in blocks
        self.probes = 0  # rounds decided so far
        self.switches = 0


class PathLearner:
    """Learns, per :class:`Context`, which candidate path costs the least per byte."""

    def __init__(
        self,
        *,
        window: int = 5,
        first_exploit: int = 8,
        max_exploit: int = 256,
        margin: float = 0.03,
        idle_ns: int = 50_000_000,
        block_bytes: int = 4 << 20,
        max_block: int = 16,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        if not 1 <= first_exploit <= max_exploit:
            raise ValueError(
                f"need 1 <= first_exploit <= max_exploit, got {first_exploit!r} and {max_exploit!r}"
            )
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be within [0, 1), got {margin!r}")
        if idle_ns <= 0 or block_bytes <= 0 or max_block < 1:
            raise ValueError("idle_ns and block_bytes must be > 0, max_block >= 1")
        self.window = window
        self.first_exploit = first_exploit
        self.max_exploit = max_exploit
        self.margin = margin
        self.idle_ns = idle_ns
        self.block_bytes = block_bytes
        self.max_block = max_block
        self._states: dict[Context, _State] = {}

    def block_messages(self, nbytes: int, *, streaming: bool = True) -> int:
        """Messages per measured block.

        Streaming: about ``block_bytes`` of them, 2 to ``max_block``, long enough for the
        ring to settle into what the path does to it.  One at a time: 2, since every
        interval is already a whole exchange.
        """
        if not streaming:
            return 2
        return max(2, min(self.max_block, self.block_bytes // max(nbytes, 1)))

    def choose(
        self,
        context: Context,
        candidates: tuple[str, ...],
        prior: str,
        nbytes: int,
        now_ns: int,
        pending_ns: int = 0,
    ) -> tuple[str, bool]:
        """The path for one message of ``nbytes`` sent at ``now_ns`` in ``context``.

        ``pending_ns`` is how long the asynchronous engines will take to finish what they
        were given (their backlog at their measured speed): a block is charged the work it
        leaves behind, so a path that returns early but piles up copies looks no cheaper than
        it is.  Returns the path and whether the context is still measuring (a round of
        probes is under way).  ``candidates`` (which include ``prior``) must depend on the
        context alone; if they change, the context starts learning again.
        """
        st = self._states.get(context)
        if st is None:
            st = self._states[context] = _State(candidates, prior, self.window)
        elif st.candidates != candidates:
            self._recast(st, candidates, prior)
        if st.last_ns >= 0:
            interval = now_ns - st.last_ns
            if 0 < interval <= self.idle_ns:  # longer: the caller was idle, not the path
                st.block_elapsed += interval
                st.block_bytes += st.last_bytes
        st.last_ns = now_ns
        st.last_bytes = nbytes
        if st.block_left == 0:
            self._close_block(st, pending_ns)
            st.block_path = self._next_path(st)
            st.block_left = self.block_messages(nbytes, streaming=context.streaming)
            st.block_bytes = 0
            st.block_elapsed = 0
            st.block_pending = pending_ns
        st.block_left -= 1
        st.arms[st.block_path].messages += 1
        return st.block_path, st.round_open

    def _recast(self, st: _State, candidates: tuple[str, ...], prior: str) -> None:
        """The candidates changed (a threshold moved): keep what was measured, try the rest."""
        for path in candidates:
            if path not in st.arms:
                st.arms[path] = _Arm(self.window)
        st.candidates = candidates
        if st.best not in candidates:
            st.best = prior
        st.plan = collections.deque(p for p in st.plan if p in candidates)
        if st.block_path not in candidates:
            st.block_left = 0  # end the block at this message
        st.exploit = 0  # a probe round next: every candidate gets measured again

    def _close_block(self, st: _State, pending_ns: int) -> None:
        if st.block_bytes > 0:
            elapsed = st.block_elapsed + pending_ns - st.block_pending
            arm = st.arms[st.block_path]
            arm.costs.append(max(elapsed, 1) / st.block_bytes)
            arm.blocks += 1
        if not st.round_open or st.plan:
            return
        # A round of probes just ended: decide, and set how long to exploit the choice.
        st.round_open = False
        best = self._best(st)
        st.basis = {p: est for p in st.candidates if (est := st.arms[p].estimate()) is not None}
        if st.probes == 0 or best != st.best:
            st.period = self.first_exploit
        else:
            st.period = min(st.period * 2, self.max_exploit)
        if best != st.best:
            st.best = best
            st.switches += 1
        st.exploit = st.period
        st.probes += 1

    def _best(self, st: _State) -> str:
        incumbent = st.best
        best, best_cost = incumbent, st.arms[incumbent].estimate()
        for path in st.candidates:
            est = st.arms[path].estimate()
            if est is None or path == incumbent:
                continue
            if best_cost is None or est < best_cost * (1 - self.margin):
                best, best_cost = path, est
        return best

    def _next_path(self, st: _State) -> str:
        if st.plan:
            return st.plan.popleft()
        if st.exploit > 0:
            st.exploit -= 1
            return st.best
        # The exploit period is over: probe every other candidate once, then the incumbent.
        st.plan.extend(c for c in st.candidates if c != st.best)
        st.plan.append(st.best)
        st.round_open = True
        return st.plan.popleft()

    def snapshot(self) -> list[dict[str, Any]]:
        """Per context: the chosen path, why, and what each candidate was measured to cost."""
        out: list[dict[str, Any]] = []
        for ctx, st in sorted(
            self._states.items(),
            key=lambda kv: (kv[0].size_class, kv[0].qos.value, kv[0].asynchronous, kv[0].streaming),
        ):
            costs = {
                path: {
                    "ns_per_kib": None if est is None else round(est * 1024, 1),
                    "blocks": arm.blocks,
                    "messages": arm.messages,
                }
                for path, arm in st.arms.items()
                for est in (arm.estimate(),)
            }
            out.append(
                {
                    **ctx.describe(),
                    "chosen": st.best,
                    "why": explain(st.best, st.prior, st.basis, decided=st.probes > 0),
                    "prior": st.prior,
                    "costs": costs,
                    "probe_rounds": st.probes,
                    "switches": st.switches,
                }
            )
        return out


def explain(best: str, prior: str, basis: dict[str, float], *, decided: bool) -> str:
    """One line on why ``best`` is the path: what each candidate cost when it was chosen."""
    if not decided:
        return f"still measuring; the cost model's choice ({prior}) meanwhile"
    ranked = sorted(basis.items(), key=lambda kv: (kv[0] != best, kv[1]))
    parts = ", ".join(f"{p} {v * 1024 / 1e3:.3g} us/KiB" for p, v in ranked)
    return f"measured cheapest at the last probe round: {parts}"
