"""The data link: the platform's own connection to a runtime, beside the host's.

A real :class:`~sealserve.runtime.RuntimeServer` and :class:`~sealserve.runtime.SealedRuntime`
in this process (in-process ipc backend), reached both through the host's endpoint and through
a second connection wrapped in a :class:`~sealserve.platform._link.RuntimeLink`: calls on the
link are answered on the link, the answers are the runtime's, and a broken link fails calls
retryably.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from sealserve.ecall import Endpoint, Message, timings
from sealserve.errors import DeadlineExceeded, RuntimeUnavailable
from sealserve.ipc import ChannelOptions, Connection
from sealserve.platform._link import RuntimeLink
from sealserve.protocol import seal_input, unseal_output
from tests.unit.instance.fakes import InProcessRuntime
from tests.unit.runtime.graphs import dense_model, plain_run
from tests.unit.runtime.keyservice import InProcessKeyService


class Linked:
    """The in-process runtime and a data link to it; records where each call came from."""

    def __init__(self, ks: InProcessKeyService) -> None:
        self.runtime = InProcessRuntime(ks)
        ours, theirs = Connection.create_inprocess_pair(
            request=ChannelOptions(arena_bytes=16 << 20),
            response=ChannelOptions(arena_bytes=16 << 20),
        )
        self.origins: list[str] = []
        holder: list[Endpoint] = []

        def handle(message: Message) -> None:
            self.origins.append(holder[0].name)
            self.runtime.server.handle(message, holder[0])

        self.runtime_side = Endpoint(theirs, name="runtime-data", handler=handle)
        holder.append(self.runtime_side)
        self.runtime_side.open()
        endpoint = Endpoint(ours, name="link", broken_error=RuntimeUnavailable).open()
        self.link = RuntimeLink(
            endpoint, generation=1, runtime_pid=None, cold_start={"runtime_start": 42.0}
        )

    def close(self) -> None:
        self.link.close()
        self.runtime_side.close()
        self.runtime.close()


@pytest.fixture
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path_factory.mktemp("ks"))
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def linked(ks: InProcessKeyService) -> Iterator[Linked]:
    harness = Linked(ks)
    try:
        yield harness
    finally:
        harness.close()


def _deadline_ms(seconds: float = 30.0) -> int:
    return int((time.time() + seconds) * 1000)


def test_a_request_over_the_link_is_served_and_answered_on_the_link(
    ks: InProcessKeyService, linked: Linked
) -> None:
    onnx = dense_model(3)
    model_id, key = ks.add_model("dense", onnx)
    user = ks.user.principal_id

    async def main() -> list[tuple[dict[str, Any], dict[str, float]]]:
        out = []
        for i in range(2):
            x = {"X": np.full((1, 64), float(i), np.float32)}
            rid = f"req-{i}"
            sealed = seal_input(key, x, model_id=model_id, user_id=user, request_id=rid,
                                clock=ks.clock)  # fmt: skip
            outcome = await linked.link.infer(
                model_id=model_id, user_id=user, request_id=rid, sealed_input=sealed,
                deadline_ms=_deadline_ms(),
            )  # fmt: skip
            got = unseal_output(key, outcome.sealed_output, model_id=model_id, user_id=user,
                                request_id=rid)  # fmt: skip
            np.testing.assert_allclose(got["Y"], plain_run(onnx, x)["Y"], rtol=1e-5, atol=1e-5)
            out.append((got, dict(outcome.timings)))
        return out

    answers = asyncio.run(main())
    assert linked.origins == ["runtime-data", "runtime-data"]
    first, second = answers[0][1], answers[1][1]
    assert {timings.RUNTIME, timings.INFERENCE, timings.TOTAL} <= set(first)
    assert first[timings.RUNTIME_START] == 42.0  # the first answer carries the cold start
    assert timings.RUNTIME_START not in second
    assert linked.runtime.runtime.stats()["requests"] == 2


def test_loads_and_evictions_go_over_the_link(ks: InProcessKeyService, linked: Linked) -> None:
    model_id, _ = ks.add_model("dense", dense_model(4))
    user = ks.user.principal_id

    async def main() -> tuple[dict[str, float], bool, bool]:
        stages = await linked.link.load(model_id=model_id, user_id=user, timeout_s=30.0)
        return (
            stages,
            await linked.link.evict(model_id=model_id),
            await linked.link.evict(model_id=model_id),
        )

    stages, evicted, again = asyncio.run(main())
    assert timings.MODEL_FETCH in stages
    assert stages[timings.RUNTIME_START] == 42.0
    assert (evicted, again) == (True, False)
    assert linked.origins == ["runtime-data"] * 3


def test_a_passed_deadline_is_not_sent_and_a_broken_link_fails_retryably(
    ks: InProcessKeyService, linked: Linked
) -> None:
    model_id, _ = ks.add_model("dense", dense_model(5))
    user = ks.user.principal_id

    async def main() -> None:
        with pytest.raises(DeadlineExceeded):
            await linked.link.infer(model_id=model_id, user_id=user, request_id="late",
                                    sealed_input=b"x", deadline_ms=_deadline_ms(-1))  # fmt: skip
        assert linked.origins == []
        linked.runtime_side.close()  # the runtime went away
        for _ in range(100):
            if not linked.link.usable:
                break
            await asyncio.sleep(0.02)
        assert not linked.link.usable
        with pytest.raises(RuntimeUnavailable) as caught:
            await linked.link.infer(model_id=model_id, user_id=user, request_id="gone",
                                    sealed_input=b"x", deadline_ms=_deadline_ms())  # fmt: skip
        assert caught.value.retryable

    asyncio.run(main())
