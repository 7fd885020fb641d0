"""The path learner: explore the candidates, exploit the cheapest, re-probe, adapt, explain."""

from __future__ import annotations

import collections

import pytest

from sealserve.ipc import Path, QoS, Reason, Scheduler
from sealserve.ipc._learner import Context, PathLearner

KIB = 1 << 10
MIB = 1 << 20
CTX = Context(size_class=(1 * MIB).bit_length(), qos=QoS.LATENCY, asynchronous=True, streaming=True)
PATHS = ("inline", "pipelined", "offload")


def _run(
    learner: PathLearner,
    cost_ns_per_byte: dict[str, float],
    messages: int,
    *,
    nbytes: int = 1 * MIB,
    start_ns: int = 0,
    prior: str = "pipelined",
) -> tuple[list[str], int]:
    """Send ``messages`` through the learner on a clock that each path advances by its cost."""
    now = start_ns
    paths: list[str] = []
    for _ in range(messages):
        path, _ = learner.choose(CTX, PATHS, prior, nbytes, now)
        paths.append(path)
        now += int(cost_ns_per_byte[path] * nbytes)
    return paths, now


def test_it_starts_on_the_prior_tries_every_path_and_settles_on_the_cheapest() -> None:
    learner = PathLearner()
    block = learner.block_messages(1 * MIB)
    assert block == 4
    paths, _ = _run(learner, {"inline": 0.1, "pipelined": 0.3, "offload": 0.5}, 2000)
    assert paths[:block] == ["pipelined"] * block  # the cost model's choice comes first
    first_round = paths[: 6 * block]
    assert collections.Counter(first_round) == {p: 2 * block for p in PATHS}
    settled = paths[6 * block :]
    share = settled.count("inline") / len(settled)
    assert share > 0.95  # probes of the slower paths become rare
    (snap,) = learner.snapshot()
    assert snap["chosen"] == "inline"
    assert snap["prior"] == "pipelined"
    assert snap["regime"] == "streaming"
    assert snap["bytes"] == [1 * MIB, 2 * MIB - 1]
    assert snap["costs"]["inline"]["ns_per_kib"] == pytest.approx(102.4)
    assert snap["why"].startswith("measured cheapest at the last probe round: inline 0.102 us/KiB")


def test_the_exploit_period_doubles_while_probes_confirm_the_choice() -> None:
    learner = PathLearner(first_exploit=4, max_exploit=32)
    block = learner.block_messages(1 * MIB)
    paths, _ = _run(learner, {"inline": 0.1, "pipelined": 0.3, "offload": 0.5}, 3000)
    blocks = paths[::block]
    # After the first round (6 blocks), runs of inline blocks between probe rounds grow.
    runs: list[int] = []
    run = 0
    for p in blocks[6:]:
        if p == "inline":
            run += 1
        else:
            if run:
                runs.append(run)
            run = 0
    assert runs[0] < runs[1] < runs[2]
    assert max(runs) <= 32 + 1  # the period, plus the incumbent's block of the probe round


def test_it_follows_a_change_in_what_the_paths_cost() -> None:
    learner = PathLearner(first_exploit=4, max_exploit=16)
    _, now = _run(learner, {"inline": 0.1, "pipelined": 0.3, "offload": 0.5}, 1000)
    # Now the machine changes (say a copy engine appears): offload becomes the cheapest.
    paths, _ = _run(learner, {"inline": 0.3, "pipelined": 0.3, "offload": 0.05}, 1000, start_ns=now)
    assert paths[-200:].count("offload") > 150  # the rest: probes of the other two
    assert learner.snapshot()[0]["switches"] >= 1


def test_a_challenger_must_beat_the_incumbent_by_the_margin() -> None:
    learner = PathLearner(margin=0.1)
    # pipelined (the prior) is 5 % dearer than inline: inside the margin, it stays.
    paths, _ = _run(learner, {"inline": 0.100, "pipelined": 0.105, "offload": 1.0}, 1000)
    assert learner.snapshot()[0]["chosen"] == "pipelined"
    assert paths[-100:].count("offload") < 10


def test_an_idle_gap_is_left_out_of_what_a_path_costs() -> None:
    learner = PathLearner(idle_ns=1_000_000)
    now = 0
    for _ in range(8):  # the first block, on the prior: 100 us per message
        learner.choose(CTX, PATHS, "pipelined", 1 * MIB, now)
        now += 100_000
    now += 10_000_000_000  # the caller goes away for ten seconds after the eighth
    learner.choose(CTX, PATHS, "pipelined", 1 * MIB, now)
    costs = learner.snapshot()[0]["costs"]["pipelined"]
    assert costs["blocks"] == 1
    assert costs["ns_per_kib"] == pytest.approx(100_000 / 1024, rel=0.01)  # the gap is not in it


def test_a_path_is_charged_the_work_it_leaves_to_an_engine() -> None:
    learner = PathLearner()
    now = 0
    pending = 0
    for _ in range(3000):
        path, _ = learner.choose(CTX, PATHS, "offload", 1 * MIB, now, pending_ns=pending)
        if path == "offload":  # returns at once; the engine needs 400 us to copy it
            now += 10_000
            pending += 400_000
        else:  # 200 us in the caller's thread, while the engine drains what it has
            now += 200_000 if path == "inline" else 300_000
            pending = max(pending - 200_000, 0)
    assert learner.snapshot()[0]["chosen"] == "inline"


def test_contexts_learn_apart() -> None:
    learner = PathLearner()
    other = Context(CTX.size_class, CTX.qos, CTX.asynchronous, streaming=False)
    now = 0
    for i in range(400):
        path, _ = learner.choose(CTX, PATHS, "inline", 1 * MIB, now)
        now += 100_000 if path == "inline" else 300_000
        path, _ = learner.choose(other, PATHS, "inline", 1 * MIB, now)
        now += 100_000 if path == "pipelined" else 300_000
        del i
    chosen = {s["regime"]: s["chosen"] for s in learner.snapshot()}
    assert chosen == {"streaming": "inline", "one at a time": "pipelined"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window"),
        ({"first_exploit": 0}, "first_exploit"),
        ({"first_exploit": 8, "max_exploit": 4}, "first_exploit"),
        ({"margin": 1.0}, "margin"),
        ({"idle_ns": 0}, "idle_ns"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PathLearner(**kwargs)  # type: ignore[arg-type]


def _scheduler() -> Scheduler:
    s = Scheduler(cache_bytes=4 * MIB)
    s.register_engine("thread", asynchronous=True, fixed_s=20e-6, bytes_per_s=6e9)
    return s


def test_the_scheduler_learns_where_it_may_choose_and_says_why() -> None:
    s = _scheduler()
    now = 0
    costs = {Path.INLINE: 0.1, Path.PIPELINED: 0.2, Path.OFFLOAD: 0.6}
    reasons: list[Reason] = []
    for _ in range(600):
        d = s.decide(
            nbytes=4 * MIB, qos=QoS.THROUGHPUT, asynchronous=True, occupancy=0.2, now_ns=now
        )
        reasons.append(d.reason)
        now += int(costs[d.path] * 4 * MIB)
    assert reasons[0] is Reason.MEASURING
    assert reasons[-1] is Reason.MEASURED
    assert d.path is Path.INLINE
    assert s.counts[Path.INLINE] > 0.9 * 600
    learned = s.snapshot()["learned"]
    assert [(x["qos"], x["asynchronous"], x["chosen"]) for x in learned] == [
        ("throughput", True, "inline")
    ]
    # Without a clock, or under the efficiency hint, the cost model decides alone.
    assert s.decide(nbytes=16 * MIB, qos=QoS.LATENCY).reason is Reason.PIPELINING_PAYS
    eff = s.decide(nbytes=16 * MIB, qos=QoS.EFFICIENCY, now_ns=now)
    assert eff.reason is Reason.EFFICIENCY
    # Where only one path can carry the message (small, synchronous), nothing is learned.
    assert s.decide(nbytes=100, qos=QoS.LATENCY, now_ns=now).reason is Reason.SMALL
    assert len(s.snapshot()["learned"]) == 1


def test_a_synchronous_send_learns_between_inline_and_pipelined_only() -> None:
    s = _scheduler()
    now = 0
    seen: set[tuple[Path, str]] = set()
    for _ in range(200):
        d = s.decide(nbytes=8 * MIB, qos=QoS.LATENCY, now_ns=now)
        seen.add((d.path, d.engine))
        now += 1_000_000 if d.path is Path.PIPELINED else 3_000_000
    assert seen == {(Path.INLINE, "inline"), (Path.PIPELINED, "inline")}
    assert d.path is Path.PIPELINED
    assert d.chunk_bytes == 1 * MIB


def test_a_changed_set_of_candidates_keeps_what_was_measured() -> None:
    learner = PathLearner()
    two = ("inline", "pipelined")
    now = 0
    for _ in range(200):
        path, _ = learner.choose(CTX, two, "pipelined", 1 * MIB, now)
        now += 100_000 if path == "inline" else 300_000
    assert learner.snapshot()[0]["chosen"] == "inline"
    blocks_before = learner.snapshot()[0]["costs"]["inline"]["blocks"]
    # The engine's hand-off got cheaper: offload becomes a candidate of this context.
    seen = set()
    for _ in range(200):
        path, _ = learner.choose(CTX, PATHS, "pipelined", 1 * MIB, now)
        seen.add(path)
        now += {"inline": 100_000, "pipelined": 300_000, "offload": 50_000}[path]
    snap = learner.snapshot()[0]
    assert seen == set(PATHS)
    assert snap["chosen"] == "offload"
    assert snap["costs"]["inline"]["blocks"] > blocks_before  # kept, and measured on
    # And back: offload is no longer possible; the choice returns among the two.
    for _ in range(200):
        path, _ = learner.choose(CTX, two, "pipelined", 1 * MIB, now)
        assert path in two
        now += 100_000 if path == "inline" else 300_000
    assert learner.snapshot()[0]["chosen"] == "inline"
