"""The gateway's routing headers: what the gateway writes, a client reads back unchanged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sealserve.protocol import RouteInfo
from sealserve.protocol import headers as hd

reasons = st.text(max_size=300)


@given(
    kind=st.sampled_from(["run", "start"]),
    instance=st.one_of(st.none(), st.integers(0, 10**6)),
    load=st.booleans(),
    cold=st.booleans(),
    evicted=st.integers(0, 50),
    waits=st.integers(0, 10**4),
    reason=reasons,
    policy=st.sampled_from(["sealserve", "sesemi", "dedicated", "lru-multiplex"]),
)
def test_a_route_survives_its_headers(
    kind: str,
    instance: int | None,
    load: bool,
    cold: bool,
    evicted: int,
    waits: int,
    reason: str,
    policy: str,
) -> None:
    sent_reason = hd.ascii_header(reason)
    route = RouteInfo(kind=kind, instance_id=instance, load=load, cold_start=cold,
                      evicted=evicted, waits=waits, reason=sent_reason, policy=policy)  # fmt: skip
    header = route.to_header()
    assert header.isascii()
    assert RouteInfo.from_headers(header, sent_reason, policy) == route


@given(text=st.text(max_size=3000), limit=st.integers(8, 2000))
def test_a_header_value_is_printable_ascii_within_its_limit(text: str, limit: int) -> None:
    value = hd.ascii_header(text, limit=limit)
    assert len(value) <= limit
    assert all(" " <= c <= "~" for c in value)
    if len(text) <= limit and all(" " <= c <= "~" for c in text):
        assert value == text
