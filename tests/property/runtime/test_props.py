"""Properties of the runtime's frames and of its model cache under random operations."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from sealserve.ecall import wire
from sealserve.errors import DeadlineExceeded, IPCError, MemoryBudgetExceeded
from sealserve.runtime import Lease, ModelCache

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_meta = st.dictionaries(st.text(max_size=12), _json_values, max_size=6)


def _frame(
    kind: wire.Kind, op: wire.Op, call_id: int, meta: dict[str, object], payload: bytes
) -> bytes:
    raw = wire.encode_meta(meta)
    buffer = bytearray(wire.frame_size(len(raw), len(payload)))
    status = wire.Status.OK
    offset = wire.write_header(
        memoryview(buffer), kind=kind, op=op, status=status, call_id=call_id, meta=raw,
        payload_len=len(payload),
    )  # fmt: skip
    buffer[offset:] = payload
    return bytes(buffer)


@given(
    kind=st.sampled_from(list(wire.Kind)),
    op=st.sampled_from(list(wire.Op)),
    call_id=st.integers(0, 2**64 - 1),
    meta=_meta,
    payload=st.binary(max_size=300),
)
def test_every_frame_round_trips(
    kind: wire.Kind, op: wire.Op, call_id: int, meta: dict[str, object], payload: bytes
) -> None:
    parsed = wire.parse_frame(memoryview(_frame(kind, op, call_id, meta, payload)))
    assert (parsed.kind, parsed.op, parsed.call_id) == (kind, op, call_id)
    assert parsed.meta == (meta or {})
    assert bytes(parsed.payload) == payload


@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_raise_only_ipc_errors(data: bytes) -> None:
    try:
        frame = wire.parse_frame(memoryview(data))
    except IPCError:
        return
    assert len(frame.payload) <= len(data)


@given(
    meta=_meta,
    payload=st.binary(max_size=64),
    index=st.integers(0, 31),
    bit=st.integers(0, 7),
)
def test_a_flipped_header_bit_is_refused_or_changes_only_that_field(
    meta: dict[str, object], payload: bytes, index: int, bit: int
) -> None:
    data = bytearray(_frame(wire.Kind.REPLY, wire.Op.INFER, 5, meta, payload))
    data[index] ^= 1 << bit
    try:
        parsed = wire.parse_frame(memoryview(bytes(data)))
    except IPCError:
        return
    # Accepted: then only the call id, op or status byte moved, never the payload's bounds.
    assert 6 <= index < 16
    assert bytes(parsed.payload) == payload


class _Model:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        assert not self.closed
        self.closed = True


_ops = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "release", "evict"]),
        st.integers(0, 5),  # model
        st.integers(1, 60),  # size
        st.integers(1, 2),  # version
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(ops=_ops)
def test_the_cache_never_exceeds_its_budget_nor_closes_a_model_in_use(
    ops: list[tuple[str, int, int, int]],
) -> None:
    budget = 100
    cache: ModelCache[_Model] = ModelCache(budget_bytes=budget)
    leases: list[tuple[Lease[_Model], _Model]] = []

    def loader(size: int) -> Callable[[Callable[[int], None]], _Model]:
        def load(reserve: Callable[[int], None]) -> _Model:
            reserve(size)
            return _Model()

        return load

    for action, model, size, version in ops:
        name = f"m{model}"
        if action == "acquire":
            try:
                lease = cache.acquire(name, version=version, loader=loader(size), deadline=0.0)
            except (DeadlineExceeded, MemoryBudgetExceeded):
                pass
            else:
                leases.append((lease, lease.value))
        elif action == "release" and leases:
            lease, _ = leases.pop(model % len(leases))
            lease.release()
        else:
            cache.evict(name)
        stats = cache.stats()
        assert 0 <= stats.used_bytes <= budget
        for _, value in leases:
            assert not value.closed
    for lease, _ in leases:
        lease.release()
    cache.clear()
    assert cache.used_bytes == 0
