"""The local platform's data link on real processes: requests go from the platform straight to
the runtime over shared memory (not through the host's HTTP), nothing in the clear is in any
shared memory of either side, and a runtime that dies is linked again in its next generation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sealserve.bench._runtime_stack import LocalStack
from sealserve.errors import RuntimeUnavailable
from sealserve.platform import LocalBackend, LocalOptions
from sealserve.protocol import seal_input, unseal_output
from tests.integration.instance.test_plaintext import found_in, needles, read_data, shared_segments
from tests.unit.runtime.graphs import marker_floats, marker_model, plain_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack"), log_level="INFO") as s:
        yield s


def _options(stack: LocalStack, run_dir: Path, **changes: object) -> LocalOptions:
    return LocalOptions(
        store_dir=stack.root / "store",
        keyservice_url=stack.keyservice_url,
        tee_socket=stack.socket_path,
        platform_key_file=stack.platform_key_file,
        keyservice_measurement=stack.keyservice_measurement,
        run_dir=run_dir,
        log_level="INFO",
        **changes,  # type: ignore[arg-type]
    )


async def _linked(backend: LocalBackend, instance_id: int, generation: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        info = backend.describe(instance_id)
        if info is not None and info.data_link == generation:
            return
        assert time.monotonic() < deadline, f"no data link to generation {generation}"
        await asyncio.sleep(0.05)


def test_requests_go_straight_to_the_runtime_and_no_shared_memory_holds_plaintext(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.user is not None
    weights = marker_floats(21, 512)
    onnx = marker_model(weights)
    model = stack.add_model("linked-marker", onnx)
    user = stack.user.principal_id
    inputs = [{"X": marker_floats(200 + i, 512)} for i in range(3)]
    secrets = {
        "weights": needles(weights.tobytes()),
        "model key": [model.model_key.to_bytes()],
        "request key": [model.request_key.to_bytes()],
        "input subkey": [model.request_key.input_key.to_bytes()],
        "output subkey": [model.request_key.output_key.to_bytes()],
    }
    for i, x in enumerate(inputs):
        secrets[f"input {i}"] = needles(x["X"].tobytes())
        secrets[f"output Z {i}"] = needles(plain_run(onnx, x)["Z"].tobytes())

    async def main() -> None:
        backend = LocalBackend(_options(stack, tmp_path / "run"))
        try:
            info = await backend.start(1, memory_mb=2048, budget_mb=1024, concurrency=4)
            await _linked(backend, 1, 1)
            stages = await backend.load(1, model_id=model.model_id, user_id=user, timeout_s=60)
            assert "model_fetch" in stages
            assert "runtime_start" in stages  # the answer carries the cold start
            for i, x in enumerate(inputs):
                rid = f"link-{i}"
                sealed = seal_input(model.request_key, x, model_id=model.model_id,
                                    user_id=user, request_id=rid)  # fmt: skip
                outcome = await backend.infer(
                    1, model_id=model.model_id, user_id=user, request_id=rid,
                    sealed_input=sealed, deadline_ms=int((time.time() + 60) * 1000),
                )  # fmt: skip
                got = unseal_output(
                    model.request_key, outcome.sealed_output, model_id=model.model_id,
                    user_id=user, request_id=rid,
                )  # fmt: skip
                assert got["Y"].tobytes() == x["X"].tobytes()
            client = backend._client(1)
            stats = client.stats()
            assert stats["instance"]["served"] == 0  # the host's HTTP never saw them
            assert stats["runtime"]["requests"] == len(inputs)
            scanned = {os.getpid(): 0, info.runtime_pid: 0, info.pid: 0}
            for pid in scanned:
                assert pid is not None
                for target, path in shared_segments(pid):
                    scanned[pid] += 1
                    hits = found_in(read_data(path), secrets)
                    assert not hits, f"{sorted(hits)} in shared memory {target} of pid {pid}"
            assert scanned[os.getpid()] >= 2  # the link's two channels, on the platform's side
            assert scanned[info.runtime_pid] >= 4  # the host's and the link's
        finally:
            await backend.close()

    asyncio.run(main())


def test_a_runtime_that_dies_is_linked_again_in_its_next_generation(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.user is not None
    onnx = marker_model(marker_floats(31, 512))
    model = stack.add_model("relinked", onnx)
    user = stack.user.principal_id
    x = {"X": np.ones((1, 512), np.float32)}

    async def infer(backend: LocalBackend, rid: str) -> bytes:
        sealed = seal_input(model.request_key, x, model_id=model.model_id, user_id=user,
                            request_id=rid)  # fmt: skip
        outcome = await backend.infer(
            1, model_id=model.model_id, user_id=user, request_id=rid, sealed_input=sealed,
            deadline_ms=int((time.time() + 60) * 1000),
        )  # fmt: skip
        return outcome.sealed_output

    async def main() -> None:
        backend = LocalBackend(_options(stack, tmp_path / "run"))
        try:
            info = await backend.start(1, memory_mb=2048, budget_mb=1024, concurrency=4)
            await _linked(backend, 1, 1)
            await infer(backend, "before")
            assert info.runtime_pid is not None
            os.kill(info.runtime_pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while backend.describe(1).data_link == 1:  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            try:  # the host is restarting it: retryable, or served through the host
                await infer(backend, "during")
            except RuntimeUnavailable as exc:
                failure: RuntimeUnavailable | None = exc
            else:
                failure = None
            assert failure is None or failure.retryable
            await _linked(backend, 1, 2)
            sealed = await infer(backend, "after")
            got = unseal_output(model.request_key, sealed, model_id=model.model_id,
                                user_id=user, request_id="after")  # fmt: skip
            np.testing.assert_allclose(got["Y"], x["X"])
            stats = backend._client(1).stats()
            assert stats["supervisor"]["restarts"] == 1
            assert stats["runtime"]["requests"] >= 1
        finally:
            await backend.close()

    asyncio.run(main())


def test_without_the_data_link_requests_go_through_the_host(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.user is not None
    onnx = marker_model(marker_floats(41, 512))
    model = stack.add_model("hosted", onnx)
    user = stack.user.principal_id
    x = {"X": np.ones((1, 512), np.float32)}

    async def main() -> None:
        backend = LocalBackend(_options(stack, tmp_path / "run", data_link=False))
        try:
            await backend.start(1, memory_mb=2048, budget_mb=1024, concurrency=4)
            sealed = seal_input(model.request_key, x, model_id=model.model_id, user_id=user,
                                request_id="hosted")  # fmt: skip
            deadline_ms = int((time.time() + 60) * 1000)
            await backend.infer(1, model_id=model.model_id, user_id=user, request_id="hosted",
                                sealed_input=sealed, deadline_ms=deadline_ms)  # fmt: skip
            assert backend.describe(1).data_link is None  # type: ignore[union-attr]
            assert backend._client(1).stats()["instance"]["served"] == 1
        finally:
            await backend.close()

    asyncio.run(main())
