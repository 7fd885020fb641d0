"""One conformance suite for every ipc backend.

``ConformanceSuite`` is subclassed once per backend (``tests/unit/ipc`` runs it in-process
over anonymous memory, ``tests/integration/ipc`` over memfd segments handed over a real Unix
socket); the subclass's ``backend`` fixture yields a :class:`Backend`.  Everything here is
behaviour a caller relies on, whatever the memory underneath.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pytest

from sealserve.errors import (
    BackpressureTimeout,
    ChannelClosed,
    IPCError,
    MessageTooLarge,
    PeerDied,
    SegmentError,
)
from sealserve.ipc import (
    ChannelOptions,
    Connection,
    CopyEngine,
    Loan,
    Path,
    Publisher,
    QoS,
    Sample,
    Scheduler,
    Subscriber,
    ThreadEngine,
)
from sealserve.ipc._layout import W
from sealserve.ipc._learner import PathLearner

SMALL = ChannelOptions(capacity=8, arena_bytes=64 << 10)


class Backend(Protocol):
    """How a test gets connected ends on one backend; everything made is closed after."""

    name: str

    def pair(
        self,
        options: ChannelOptions = ...,
        *,
        qos: QoS | str = ...,
        scheduler: Scheduler | None = ...,
        engines: list[CopyEngine] | None = ...,
    ) -> tuple[Publisher, Subscriber]: ...

    def fanout(
        self, n: int, options: ChannelOptions = ...
    ) -> tuple[Publisher, list[Subscriber]]: ...

    def connections(
        self, request: ChannelOptions = ..., response: ChannelOptions = ...
    ) -> tuple[Connection, Connection]: ...

    def kill(self, conn: Connection) -> None:
        """Make ``conn``'s side vanish as a crashed process would (no goodbye)."""
        ...


def _wait_until(cond: Callable[[], bool], what: str, limit: int = 2_000_000) -> None:
    for _ in range(limit):
        if cond():
            return
        threading.Event().wait(0.0005)
    raise AssertionError(f"never happened: {what}")


class ConformanceSuite:
    """Subclass with a ``backend`` fixture; pytest collects the subclass."""

    # -- messages --------------------------------------------------------------------------

    def test_send_and_receive_any_bytes_like(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        payloads: list[Any] = [
            b"hello",
            bytearray(b"\x00\x01\x02"),
            np.arange(100, dtype=np.uint32),
            memoryview(b"abcdefgh").cast("B", shape=[2, 4]),
            b"",
        ]
        for i, data in enumerate(payloads):
            done = pub.send(data)
            assert done.seq == i
            assert done.done()
            sample = sub.receive(timeout=1.0)
            assert sample is not None
            assert sample.seq == i
            assert sample.tobytes() == memoryview(data).tobytes()
            assert len(sample) == memoryview(data).nbytes
            sample.release()
        assert sub.receive(timeout=0) is None

    def test_sample_is_a_read_only_view_until_released(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        pub.send(np.arange(16, dtype=np.uint64))
        with sub.receive(timeout=1.0) as sample:
            assert sample is not None
            arr = sample.array(np.uint64)
            assert not arr.flags.writeable
            assert sample.view.readonly
            assert list(np.asarray(sample).view(np.uint64)) == list(range(16))
            assert bytes(sample) == np.arange(16, dtype=np.uint64).tobytes()
        assert sample.released
        with pytest.raises(IPCError, match="released"):
            _ = sample.view

    def test_loan_is_written_in_place_and_committed_without_copy(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        loan = pub.loan(4096)
        loan.array(np.uint32)[:] = np.arange(1024, dtype=np.uint32)
        seq = loan.commit()
        with pytest.raises(IPCError, match="committed"):
            loan.array()
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        assert sample.seq == seq
        assert np.array_equal(sample.array(np.uint32), np.arange(1024, dtype=np.uint32))
        sample.release()
        stats = pub.stats()
        assert stats.by_path["loan"] == {"messages": 1, "bytes": 4096}
        assert "inline" not in stats.by_path

    def test_a_loan_and_a_sample_keep_their_contract_on_every_core(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        loan = pub.loan(64)
        assert isinstance(loan, Loan)
        view = loan.view
        assert loan.view is view  # one view per loan
        view[:] = bytes(range(64))
        assert loan.state == "open"
        loan.commit()
        assert loan.state == "committed"
        with pytest.raises(ValueError, match="released"):
            view[0] = 1  # the view went with the commit: no write lands in a published message
        with pytest.raises(IPCError, match="committed"):
            _ = loan.view
        with pytest.raises(IPCError, match="committed"):
            loan.commit()
        with pytest.raises(RuntimeError, match="boom"), pub.loan(64) as failed:
            raise RuntimeError("boom")
        assert failed.state == "discarded"  # an error in the with block discards
        with pub.loan(8) as ok:
            ok.view[:] = b"in place"
        assert ok.state == "committed"
        sample = sub.receive(timeout=1.0)
        assert isinstance(sample, Sample)
        assert (sample.seq, sample.nbytes, bytes(sample.view)) == (0, 64, bytes(range(64)))
        assert sub.held == 1
        with sample:
            pass
        assert sample.released
        assert sub.held == 0
        sample.release()  # idempotent
        second = sub.receive(timeout=1.0)
        assert second is not None
        assert bytes(second.view) == b"in place"
        assert repr(second) == "Sample(seq=1, nbytes=8, held)"
        pending = pub.loan(16)
        pub.close()
        with pytest.raises(ChannelClosed):
            pending.commit()  # a loan outliving its publisher is refused, not published
        second.release()

    def test_loan_commits_a_shorter_message_and_send_of_a_loan_elides_the_copy(
        self, backend: Backend
    ) -> None:
        pub, sub = backend.pair(SMALL)
        loan = pub.loan(1000)
        loan.view[:5] = b"short"
        loan.commit(5)
        loan2 = pub.loan(3)
        loan2.view[:] = b"abc"
        done = pub.send(loan2)
        assert done.path is Path.LOAN
        got = []
        for _ in range(2):
            sample = sub.receive(timeout=1.0)
            assert sample is not None
            got.append(sample.tobytes())
            sample.release()
        assert got == [b"short", b"abc"]

    def test_discarded_loans_publish_nothing_and_give_their_room_back(
        self, backend: Backend
    ) -> None:
        pub, sub = backend.pair(SMALL)
        loan = pub.loan(60 << 10)

        def write_then_fail() -> None:
            with loan:
                loan.view[:4] = b"half"
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            write_then_fail()
        assert loan.state == "discarded"
        pub.loan(60 << 10).discard()
        assert sub.receive(timeout=0) is None
        assert pub.stats().arena_bytes_in_use == 0
        with pub.loan(60 << 10) as loan:  # the room really came back
            loan.view[:4] = b"full"
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        assert sample.tobytes()[:4] == b"full"
        sample.release()

    def test_messages_arrive_in_order_across_ring_laps(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        for i in range(5 * SMALL.capacity):
            pub.send(i.to_bytes(4, "little") * (1 + i % 7))
            sample = sub.receive(timeout=1.0)
            assert sample is not None
            assert sample.tobytes() == i.to_bytes(4, "little") * (1 + i % 7)
            sample.release()

    # -- backpressure and limits -------------------------------------------------------------

    def test_full_ring_gives_backpressure_until_a_sample_is_released(
        self, backend: Backend
    ) -> None:
        pub, sub = backend.pair(SMALL)
        for _ in range(SMALL.capacity):
            pub.send(b"x" * 100)
        with pytest.raises(BackpressureTimeout, match="stayed full"):
            pub.send(b"y", timeout=0)
        with pytest.raises(BackpressureTimeout):
            pub.send(b"y", timeout=0.02)
        held = [sub.receive(timeout=1.0) for _ in range(SMALL.capacity)]
        assert all(s is not None for s in held)
        with pytest.raises(BackpressureTimeout):
            pub.send(b"y", timeout=0)  # received is not released
        held[0].release()  # type: ignore[union-attr]
        pub.send(b"y", timeout=1.0)
        for s in held[1:]:
            s.release()  # type: ignore[union-attr]
        last = sub.receive(timeout=1.0)
        assert last is not None
        assert last.tobytes() == b"y"
        last.release()
        assert pub.stats().timeouts >= 2

    def test_a_full_arena_gives_backpressure_too(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        pub.send(b"a" * (40 << 10))
        with pytest.raises(BackpressureTimeout):
            pub.send(b"b" * (40 << 10), timeout=0)
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        sample.release()
        pub.send(b"b" * (40 << 10), timeout=1.0)

    def test_held_messages_do_not_stop_the_others_from_flowing(self, backend: Backend) -> None:
        # The runtime's report: release 0, 2 and 3, hold 1, send one more and hold it too;
        # the next send was refused with ~1 MiB of the arena free (the allocation had gone
        # back to the start behind the held message, and reclamation stopped at it).
        pub, sub = backend.pair(ChannelOptions(capacity=8, arena_bytes=1 << 20))
        for i in range(4):
            pub.send(bytes([i]) * 64)
        first = [sub.receive(timeout=1.0) for _ in range(4)]
        assert all(s is not None for s in first)
        for i in (0, 2, 3):
            first[i].release()  # type: ignore[union-attr]
        pub.send(b"\x04" * 64, timeout=0)
        fifth = sub.receive(timeout=1.0)
        assert fifth is not None
        held = [(first[1], b"\x01" * 64), (fifth, b"\x04" * 64)]
        # Two messages held, the rest of the ring free: a stream of many ring lengths and
        # several arena laps flows past them without ever waiting.
        for i in range(5, 5 + 6 * 8):
            payload = bytes([i]) * (64 if i % 3 else 300 << 10)
            pub.send(payload, timeout=0)
            sample = sub.receive(timeout=1.0)
            assert sample is not None
            assert sample.tobytes() == payload
            sample.release()
        for sample, content in held:
            assert sample is not None
            assert sample.tobytes() == content  # nothing was written over them
            sample.release()
        assert pub.stats().timeouts == 0

    def test_free_space_is_used_wherever_it_is(self, backend: Backend) -> None:
        # Released out of order, the space before and after a held message is reusable.
        pub, sub = backend.pair(ChannelOptions(capacity=8, arena_bytes=64 << 10))
        for i in range(4):
            pub.send(bytes([i]) * (16 << 10))
        samples = [sub.receive(timeout=1.0) for _ in range(4)]
        assert all(s is not None for s in samples)
        for i in (0, 2, 3):
            samples[i].release()  # type: ignore[union-attr]
        pub.send(b"a" * (32 << 10), timeout=0)  # after the held message
        pub.send(b"b" * (16 << 10), timeout=0)  # before it
        with pytest.raises(BackpressureTimeout):
            pub.send(b"c", timeout=0)  # now the arena really is full
        for want in (b"a" * (32 << 10), b"b" * (16 << 10)):
            s = sub.receive(timeout=1.0)
            assert s is not None
            assert s.tobytes() == want
            s.release()
        assert samples[1].tobytes() == bytes([1]) * (16 << 10)  # type: ignore[union-attr]
        samples[1].release()  # type: ignore[union-attr]
        pub.send(b"d" * (64 << 10), timeout=0)  # all released: the whole arena is one piece

    def test_a_message_still_being_written_keeps_its_room_when_released_early(
        self, backend: Backend
    ) -> None:
        # A reader may let go of a streamed message before its tail has landed; the
        # producer is still writing there, so the room must not be handed out again yet.
        pub, sub = backend.pair(SMALL)
        loan = pub.loan(40 << 10)
        loan.view[:1000] = b"h" * 1000
        loan.publish(1000)
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        sample.release()
        with pytest.raises(BackpressureTimeout):
            pub.send(b"x" * (40 << 10), timeout=0)  # would land on the loan's tail
        loan.view[1000:] = b"t" * ((40 << 10) - 1000)
        loan.commit()
        pub.send(b"x" * (40 << 10), timeout=1.0)
        after = sub.receive(timeout=1.0)
        assert after is not None
        assert after.tobytes() == b"x" * (40 << 10)
        after.release()

    def test_a_blocked_producer_is_woken_by_a_release(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL, qos=QoS.EFFICIENCY)
        for _ in range(SMALL.capacity):
            pub.send(b"x")
        sent = threading.Event()

        def producer() -> None:
            pub.send(b"late", timeout=10.0)
            sent.set()

        t = threading.Thread(target=producer)
        t.start()
        _wait_until(lambda: pub.stats().blocks >= 1, "producer blocks on the full ring")
        assert not sent.is_set()
        first = sub.receive(timeout=1.0)
        assert first is not None
        first.release()
        t.join(timeout=10)
        assert sent.is_set()

    def test_oversized_messages_are_refused(self, backend: Backend) -> None:
        pub, _ = backend.pair(SMALL)
        too_big = SMALL.arena_bytes + 1
        with pytest.raises(MessageTooLarge, match="arena"):
            pub.send(bytes(too_big))
        with pytest.raises(MessageTooLarge, match="larger arena_bytes"):
            pub.loan(too_big)
        with pytest.raises(ValueError, match=">= 0"):
            pub.loan(-1)
        with pytest.raises(TypeError, match="int"):
            pub.loan(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="bytes-like"):
            pub.send("text")

    # -- waiting ---------------------------------------------------------------------------

    @pytest.mark.parametrize("qos", ["latency", "efficiency", "throughput"])
    def test_a_blocked_subscriber_is_woken_by_a_publish(self, backend: Backend, qos: str) -> None:
        pub, sub = backend.pair(SMALL, qos=qos)
        got: list[bytes] = []

        def consumer() -> None:
            sample = sub.receive(timeout=10.0)
            assert sample is not None
            got.append(sample.tobytes())
            sample.release()

        t = threading.Thread(target=consumer)
        t.start()
        _wait_until(lambda: sub.stats().blocks >= 1, "subscriber blocks")
        pub.send(b"wake up")
        t.join(timeout=10)
        assert got == [b"wake up"]
        assert sub.stats().wakeups_received >= 1
        assert pub.stats().wakeups_sent >= 1

    @pytest.mark.parametrize(
        ("qos", "policy"), [("latency", "wake"), ("efficiency", "wake"), ("throughput", "batch")]
    )
    def test_wake_ups_follow_the_notification_policy_and_leave_no_reader_asleep(
        self, backend: Backend, qos: str, policy: str
    ) -> None:
        pub, sub = backend.pair(SMALL, qos=qos)
        burst = 4
        # A reader stopped while asleep (as SIGSTOP would leave it): its waiting flag names
        # the data epoch it sleeps on, and it cannot lower the flag before the burst is out.
        flag = sub._cw + W.C_WAITING
        sub._w[flag] = (sub._w[W.DATA_EPOCH] & 0xFFFFFFFF) + 1
        for i in range(burst):
            pub.send(b"burst %d" % i, qos=qos)
        stats = pub.stats()
        if policy == "batch":  # one wake-up for the sleep; the rest of the burst rides on it
            assert stats.wakeups_sent == 1
            assert stats.notify == {"batch": {"woken": 1, "coalesced": burst - 1, "none-needed": 0}}
        else:  # a wake-up every time the flag is seen up
            assert stats.wakeups_sent == burst
            assert stats.notify == {"wake": {"woken": burst, "coalesced": 0, "none-needed": 0}}
        sub._w[flag] = 0  # it runs again: the epoch moved, so it does not sleep
        for i in range(burst):
            sample = sub.receive(timeout=1.0)
            assert sample is not None
            assert sample.tobytes() == b"burst %d" % i
            sample.release()
        # A real reader that blocks is woken under every policy, and a reader that is not
        # asleep needs no wake-up at all.
        got: list[bytes] = []

        def consumer() -> None:
            for _ in range(2):
                sample = sub.receive(timeout=10.0)
                assert sample is not None
                got.append(sample.tobytes())
                sample.release()

        t = threading.Thread(target=consumer)
        t.start()
        _wait_until(lambda: sub.stats().blocks >= 1, "the reader blocks")
        pub.send(b"wake up", qos=qos)
        _wait_until(lambda: len(got) == 1, "the reader is woken")
        blocks = sub.stats().blocks
        _wait_until(lambda: sub.stats().blocks > blocks, "the reader blocks again")
        pub.send(b"and again", qos=qos)
        t.join(timeout=10)
        assert got == [b"wake up", b"and again"]
        pub.send(b"nobody asleep", qos=qos)
        after = pub.stats()
        assert after.wakeups_sent == stats.wakeups_sent + 2
        assert after.notify[policy]["woken"] == stats.notify[policy]["woken"] + 2
        assert after.notify[policy]["none-needed"] == 1
        assert sub.stats().wakeups_received >= 2

    def test_the_spin_budget_adapts_to_the_wake_ups_it_measures(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL, qos=QoS.EFFICIENCY)
        before = sub.stats()
        got: list[bytes] = []

        def consumer() -> None:
            for _ in range(4):
                sample = sub.receive(timeout=10.0)
                assert sample is not None
                got.append(sample.tobytes())
                sample.release()

        t = threading.Thread(target=consumer)
        t.start()
        for i in range(4):
            blocks = sub.stats().blocks
            _wait_until(lambda b=blocks: sub.stats().blocks > b, "the reader blocks")
            pub.send(b"%d" % i)
            _wait_until(lambda n=i + 1: len(got) == n, "the reader is woken")
        t.join(timeout=10)
        after = sub.stats()
        assert after.wakeups_received >= 4
        # Every wake-up it measured moved the average away from the starting guess, and the
        # budget follows: twice the measured cost, clamped to [2 us, 200 us].
        assert after.wake_cost_us != before.wake_cost_us
        assert after.spin_budget_us == pytest.approx(
            min(max(2 * after.wake_cost_us, 2.0), 200.0), abs=1e-3
        )

    def test_receive_times_out_with_none(self, backend: Backend) -> None:
        _, sub = backend.pair(SMALL, qos="efficiency")
        assert sub.receive(timeout=0.02) is None
        assert sub.stats().timeouts >= 1
        with pytest.raises(ValueError, match="qos must be one of"):
            sub.receive(timeout=0.01, qos="fastest")

    # -- fan-out ---------------------------------------------------------------------------

    def test_fan_out_delivers_each_message_to_every_subscriber_once(self, backend: Backend) -> None:
        pub, subs = backend.fanout(
            3, ChannelOptions(capacity=8, arena_bytes=64 << 10, max_subscribers=4)
        )
        assert pub.subscribers == 3
        for i in range(20):
            pub.send(bytes([i]) * 32, timeout=1.0)
            for sub in subs:
                sample = sub.receive(timeout=1.0)
                assert sample is not None
                assert sample.tobytes() == bytes([i]) * 32
                sample.release()

    def test_a_slot_is_reclaimed_only_when_every_subscriber_released_it(
        self, backend: Backend
    ) -> None:
        opts = ChannelOptions(capacity=2, arena_bytes=64 << 10, max_subscribers=2)
        pub, (a, b) = backend.fanout(2, opts)
        pub.send(b"1")
        pub.send(b"2")
        sa = a.receive(timeout=1.0)
        assert sa is not None
        sa.release()
        with pytest.raises(BackpressureTimeout):
            pub.send(b"3", timeout=0)  # b still holds message 1
        sb = b.receive(timeout=1.0)
        assert sb is not None
        sb.release()
        pub.send(b"3", timeout=1.0)

    # -- pipelining and engines ------------------------------------------------------------

    def test_a_loan_published_early_is_readable_chunk_by_chunk(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        loan = pub.loan(3000)
        loan.view[:1000] = b"a" * 1000
        loan.publish(1000)
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        assert not sample.complete
        assert sample.ready_bytes == 1000
        assert not sample.wait(timeout=0.01)
        chunks = sample.chunks()
        assert bytes(next(chunks)) == b"a" * 1000
        loan.view[1000:] = b"b" * 2000
        loan.publish(2000)
        assert bytes(next(chunks)) == b"b" * 1000
        loan.commit()
        assert bytes(next(chunks)) == b"b" * 1000
        assert list(chunks) == []
        assert sample.complete
        assert sample.tobytes() == b"a" * 1000 + b"b" * 2000
        sample.release()
        other = pub.loan(10)
        other.publish(8)
        with pytest.raises(ValueError, match="backwards"):
            other.publish(4)

    def test_consumer_side_placement_copies_as_chunks_land_and_frees_the_slot(
        self, backend: Backend
    ) -> None:
        pub, sub = backend.pair(ChannelOptions(capacity=2, arena_bytes=4 << 20))
        payload = np.arange(1 << 18, dtype=np.uint32)  # 1 MiB
        loan = pub.loan(payload.nbytes)
        loan.array(np.uint32)[:] = payload
        loan.publish(payload.nbytes // 2)
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        out = np.zeros_like(payload)
        copying = threading.Thread(target=sample.copy_into, args=(out,))
        copying.start()
        _wait_until(lambda: out[(1 << 17) - 1] != 0, "the first half is copied as it lands")
        loan.commit()
        copying.join(timeout=10)
        assert np.array_equal(out, payload)
        assert sample.released
        pub.send(b"a")
        pub.send(b"b", timeout=1.0)  # both slots free again: the sample released itself
        small = bytearray(8)
        assert sub.receive_into(small, timeout=1.0) == 1
        assert small[:1] == b"a"
        with pytest.raises(ValueError, match="holds 0 bytes; the message has 1"):
            sub.receive_into(bytearray(0), timeout=1.0)  # b"b", released all the same
        assert sub.receive_into(bytearray(8), timeout=0) is None
        pub.send(b"c", timeout=0)
        pub.send(b"d", timeout=0)

    @pytest.mark.parametrize("force", [Path.INLINE, Path.OFFLOAD, Path.PIPELINED])
    def test_every_copy_path_delivers_the_same_bytes_in_order(
        self, backend: Backend, force: Path
    ) -> None:
        with ThreadEngine() as engine:
            opts = ChannelOptions(capacity=16, arena_bytes=8 << 20)
            pub, sub = backend.pair(opts, scheduler=Scheduler(force=force), engines=[engine])
            rng = np.random.default_rng(7)
            payloads = [rng.integers(0, 255, n, dtype=np.uint8) for n in (10, 300 << 10, 2 << 20)]
            done = [pub.send_async(p.tobytes()) for p in payloads]
            pub.flush(timeout=10)
            assert all(d.done() for d in done)
            assert [d.seq for d in done] == [0, 1, 2]
            assert all(d.path is force for d in done)
            for p in payloads:
                sample = sub.receive(timeout=5.0)
                assert sample is not None
                assert sample.wait(timeout=5.0)
                assert np.array_equal(sample.array(), p)
                sample.release()
            decisions = pub.stats().scheduler
            assert decisions is not None
            assert decisions["decisions"][force.value] == 3

    @pytest.mark.parametrize(
        ("field", "message"),
        [
            ("queue", "queue entry of message 0 .* is corrupt"),
            ("tag", "descriptor of message 0 .* is corrupt"),
            ("offset", "points outside the arena"),
            ("wrap", "points outside the arena"),  # offset + length wraps around 2**64
            ("length", "points outside the arena"),
            ("progress", "points outside the arena"),
        ],
    )
    def test_a_hostile_descriptor_is_refused_not_followed(
        self, backend: Backend, field: str, message: str
    ) -> None:
        pub, sub = backend.pair(SMALL)
        pub.send(b"x" * 100)
        seg = pub.channel.segment
        w, g = seg.words, seg.geometry
        queue = g.queue_word(0)
        d = g.desc_word(w[queue])
        if field == "queue":
            w[queue] = g.capacity + 5
        elif field == "tag":
            w[d + W.D_TAG] = 77
        elif field == "offset":
            w[d + W.D_OFFSET] = g.arena_size - 50
        elif field == "wrap":
            w[d + W.D_OFFSET] = (1 << 64) - 64
        elif field == "length":
            w[d + W.D_LENGTH] = (1 << 64) - 1
        else:
            w[d + W.D_PROGRESS] = 101
        with pytest.raises(SegmentError, match=message):
            sub.receive(timeout=1.0)

    def test_the_scheduler_measures_the_paths_it_may_choose_and_says_what_it_chose(
        self, backend: Backend
    ) -> None:
        # Short blocks (two messages each), so that a few dozen sends finish a round.
        scheduler = Scheduler(learner=PathLearner(block_bytes=1 << 20))
        pub, sub = backend.pair(
            ChannelOptions(capacity=8, arena_bytes=8 << 20), scheduler=scheduler
        )
        payload = bytes(range(256)) * 2048  # 512 KiB: inline or pipelined, synchronous
        got: list[int] = []

        def reader() -> None:
            for _ in range(48):
                sample = sub.receive(timeout=10.0)
                assert sample is not None
                assert sample.wait(timeout=10.0)
                got.append(bytes(sample.view) == payload)
                sample.release()

        t = threading.Thread(target=reader)
        t.start()
        paths = [pub.send(payload, qos="latency").path for _ in range(48)]
        t.join(timeout=30)
        assert got == [True] * 48
        assert set(paths) == {Path.INLINE, Path.PIPELINED}  # both were tried
        snap = pub.stats().scheduler
        assert snap is not None
        learned = snap["learned"]  # a context per regime: streaming, or one at a time
        assert learned
        assert {c["regime"] for c in learned} <= {"streaming", "one at a time"}
        for ctx in learned:
            assert ctx["bytes"] == [512 << 10, (1 << 20) - 1]
            assert ctx["qos"] == "latency"
            assert ctx["prior"] in ("inline", "pipelined")  # the cost model's choice
            assert ctx["chosen"] in ("inline", "pipelined")
        assert sum(c["costs"]["inline"]["messages"] for c in learned) >= 2, learned
        assert sum(c["costs"]["pipelined"]["messages"] for c in learned) >= 2, learned
        assert any(
            c["why"].startswith("measured cheapest at the last probe round: ") for c in learned
        )

    def test_the_scheduler_picks_pipelining_for_large_latency_messages(
        self, backend: Backend
    ) -> None:
        pub, sub = backend.pair(ChannelOptions(capacity=8, arena_bytes=16 << 20))
        small = pub.send(b"x" * 100)
        large = pub.send(bytes(8 << 20), qos="latency")
        efficient = pub.send(bytes(4 << 20), qos="efficiency")
        assert small.path is Path.INLINE
        assert large.path is Path.PIPELINED
        assert efficient.path is Path.INLINE
        for _ in range(3):
            sample = sub.receive(timeout=5.0)
            assert sample is not None
            sample.release()
        snap = pub.stats().scheduler
        assert snap is not None
        assert snap["decisions"] == {"inline": 2, "pipelined": 1}
        assert snap["thresholds"]["pipelined_from_bytes"] <= 8 << 20
        assert any(d["path"] == "pipelined" for d in snap["recent"])

    # -- closing ---------------------------------------------------------------------------

    def test_a_closed_publisher_drains_then_reads_as_closed(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        pub.send(b"last words")
        pub.close()
        with pytest.raises(ChannelClosed):
            pub.send(b"more")
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        assert sample.tobytes() == b"last words"
        sample.release()
        with pytest.raises(ChannelClosed, match="closed"):
            sub.receive(timeout=1.0)

    def test_a_subscriber_that_leaves_gives_back_what_it_held(self, backend: Backend) -> None:
        opts = ChannelOptions(capacity=4, arena_bytes=64 << 10, max_subscribers=2)
        pub, (keeper, leaver) = backend.fanout(2, opts)
        for _ in range(4):
            pub.send(b"m")
        held = [leaver.receive(timeout=1.0) for _ in range(4)]
        assert all(h is not None for h in held)
        for _ in range(4):
            s = keeper.receive(timeout=1.0)
            assert s is not None
            s.release()
        leaver.close()
        pub.send(b"after", timeout=2.0)  # the leaver's marks were reclaimed
        assert pub.subscribers == 1
        assert pub.stats().reclaimed_slots.get("left") == 4
        with pytest.raises(IPCError, match="released"):
            _ = held[0].view  # type: ignore[union-attr]

    # -- connections and peers -------------------------------------------------------------

    def test_a_connection_carries_requests_and_responses(self, backend: Backend) -> None:
        host, runtime = backend.connections()
        host.publisher.send(b"request")
        req = runtime.subscriber.receive(timeout=2.0)
        assert req is not None
        assert req.tobytes() == b"request"
        req.release()
        with runtime.publisher.loan(8) as loan:
            loan.view[:] = b"response"
        resp = host.subscriber.receive(timeout=2.0)
        assert resp is not None
        assert resp.tobytes() == b"response"
        resp.release()

    def test_an_orderly_close_reads_as_closed_not_as_death(self, backend: Backend) -> None:
        host, runtime = backend.connections()
        runtime.close()
        with pytest.raises(ChannelClosed):
            host.subscriber.receive(timeout=2.0)

        def keep_sending() -> None:
            for _ in range(100):
                host.publisher.send(b"x", timeout=2.0)

        with pytest.raises(ChannelClosed):
            keep_sending()

    def test_a_dead_producer_is_reported_after_its_messages(self, backend: Backend) -> None:
        host, runtime = backend.connections()
        host.publisher.send(b"before")
        loan = host.publisher.loan(100)  # killed mid-loan
        loan.view[:6] = b"half w"
        backend.kill(host)
        sample = runtime.subscriber.receive(timeout=2.0)
        assert sample is not None
        assert sample.tobytes() == b"before"
        sample.release()
        with pytest.raises(PeerDied, match="died"):
            runtime.subscriber.receive(timeout=5.0)

    def test_a_dead_producer_mid_stream_fails_the_reader(self, backend: Backend) -> None:
        host, runtime = backend.connections()
        loan = host.publisher.loan(1000)
        loan.publish(100)
        sample = runtime.subscriber.receive(timeout=2.0)
        assert sample is not None
        backend.kill(host)
        with pytest.raises(PeerDied, match="mid-message"):
            sample.wait(timeout=5.0)

    def test_a_dead_consumer_holding_samples_is_reclaimed(self, backend: Backend) -> None:
        host, runtime = backend.connections(
            request=ChannelOptions(capacity=4, arena_bytes=64 << 10)
        )
        for _ in range(4):
            host.publisher.send(b"job")
        held = [runtime.subscriber.receive(timeout=2.0) for _ in range(3)]
        assert all(h is not None for h in held)
        backend.kill(runtime)
        with pytest.raises(PeerDied, match="reclaimed"):
            host.publisher.send(b"more", timeout=5.0)
        stats = host.publisher.stats()
        assert stats.reclaimed_slots == {"died": 4}
        assert stats.in_flight == 0
        with pytest.raises(PeerDied):
            host.subscriber.receive(timeout=5.0)

    # -- stats -----------------------------------------------------------------------------

    def test_stats_count_messages_bytes_and_paths(self, backend: Backend) -> None:
        pub, sub = backend.pair(SMALL)
        pub.send(b"abc")
        with pub.loan(5) as loan:
            loan.view[:] = b"12345"
        for _ in range(2):
            s = sub.receive(timeout=1.0)
            assert s is not None
            s.release()
        ps, ss = pub.stats(), sub.stats()
        assert (ps.messages, ps.bytes) == (2, 8)
        assert ps.by_path == {
            "inline": {"messages": 1, "bytes": 3},
            "loan": {"messages": 1, "bytes": 5},
        }
        assert (ss.messages, ss.bytes, ss.role) == (2, 8, "subscriber")
        assert ps.capacity == SMALL.capacity
        assert 0 <= ps.occupancy <= 1
        assert ps.as_dict()["scheduler"]["model"]["inline"]["kind"] == "inline"

    def test_channel_and_connection_stats_show_every_end_and_the_scheduler(
        self, backend: Backend
    ) -> None:
        pub, sub = backend.pair(SMALL)
        pub.send(b"abc")
        sample = sub.receive(timeout=1.0)
        assert sample is not None
        sample.release()
        report = pub.channel.stats()
        assert report.channel == pub.name
        assert report.publisher is not None
        assert (report.publisher.role, report.publisher.messages) == ("publisher", 1)
        scheduler = report.as_dict()["publisher"]["scheduler"]
        assert scheduler["decisions"] == {"inline": 1}
        assert scheduler["notify"]["decisions"] == {"wake": 1}
        assert scheduler["model"]["inline"]["gb_per_s"] > 0
        assert "pipelined_from_bytes" in scheduler["thresholds"]
        readers = sub.channel.stats().subscribers  # the subscriber's own side
        assert [(r.role, r.messages, r.bytes) for r in readers] == [("subscriber", 1, 3)]

        host, runtime = backend.connections()
        host.publisher.send(b"request")
        req = runtime.subscriber.receive(timeout=2.0)
        assert req is not None
        req.release()
        host_stats, runtime_stats = host.stats(), runtime.stats()
        assert set(host_stats) == set(runtime_stats) == {"publisher", "subscriber"}
        assert host_stats["publisher"].messages == 1
        assert host_stats["publisher"].scheduler is not None
        assert runtime_stats["subscriber"].messages == 1
        host.close()
        with pytest.raises(IPCError, match="closed"):
            host.stats()
        pub.channel.close()
        with pytest.raises(IPCError, match="closed"):
            pub.channel.stats()
