"""Cold starts on real processes: hosts fork from the platform's host template and runtimes
from the TEE platform's measured template; every runtime has its own key, each serves; and a
runtime that cannot attest its KeyService never becomes an instance a request can reach."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sealserve.bench._runtime_stack import LocalStack
from sealserve.errors import PlatformError
from sealserve.platform import LocalBackend, LocalOptions
from sealserve.protocol import seal_input, unseal_output
from tests.unit.runtime.graphs import dense_model, plain_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack"), log_level="INFO") as s:
        yield s


def _options(stack: LocalStack, run_dir: Path, **changes: object) -> LocalOptions:
    values: dict[str, object] = {
        "store_dir": stack.root / "store",
        "keyservice_url": stack.keyservice_url,
        "tee_socket": stack.socket_path,
        "platform_key_file": stack.platform_key_file,
        "keyservice_measurement": stack.keyservice_measurement,
        "run_dir": run_dir,
        "log_level": "INFO",
        **changes,
    }
    return LocalOptions(**values)  # type: ignore[arg-type]


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _runtime_template(stack: LocalStack) -> int:
    assert stack.platform is not None
    stack.platform.prepare("runtime", config=stack.runtime_config)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for template in stack.platform.templates():
            if template["entry"] == "runtime":
                return int(template["pid"])  # type: ignore[call-overload]
        time.sleep(0.05)
    raise AssertionError("no runtime template")


def test_instances_fork_from_templates_and_each_runtime_has_its_own_key(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.user is not None
    template_pid = _runtime_template(stack)
    onnx = dense_model(7)
    model = stack.add_model("forked", onnx)
    user = stack.user.principal_id
    x = {"X": np.full((1, 64), 0.5, np.float32)}

    async def main() -> None:
        backend = LocalBackend(_options(stack, tmp_path / "run"))
        backend.prepare()
        try:
            infos = [
                await backend.start(i, memory_mb=2048, budget_mb=512, concurrency=2) for i in (1, 2)
            ]
            zygote = backend._zygote_popen
            assert zygote is not None
            keys = set()
            for info in infos:
                assert info.pid is not None
                assert info.runtime_pid is not None
                assert _parent_of(info.pid) == zygote.pid  # the host was forked
                assert _parent_of(info.runtime_pid) == template_pid  # so was the runtime
                rid = f"forked-{info.instance_id}"
                sealed = seal_input(model.request_key, x, model_id=model.model_id,
                                    user_id=user, request_id=rid)  # fmt: skip
                outcome = await backend.infer(
                    info.instance_id, model_id=model.model_id, user_id=user, request_id=rid,
                    sealed_input=sealed, deadline_ms=int((time.time() + 60) * 1000),
                )  # fmt: skip
                got = unseal_output(
                    model.request_key, outcome.sealed_output, model_id=model.model_id,
                    user_id=user, request_id=rid,
                )  # fmt: skip
                np.testing.assert_allclose(got["Y"], plain_run(onnx, x)["Y"], rtol=1e-5, atol=1e-5)
                # its key was released to this runtime: made after the fork, its own
                keys.add(backend._client(info.instance_id).stats()["runtime"]["public_key_sha256"])
            assert len(keys) == 2
        finally:
            await backend.close()

    asyncio.run(main())


def test_a_runtime_that_cannot_attest_its_keyservice_never_becomes_an_instance(
    stack: LocalStack, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"

    async def main() -> None:
        # Pinned to a KeyService measurement that is not this KeyService's: its attestation
        # fails at start, so the host never says it is ready and no request can be sent to it.
        backend = LocalBackend(_options(stack, run_dir, keyservice_measurement="ab" * 32))
        try:
            with pytest.raises(PlatformError, match="before it was ready"):
                await backend.start(1, memory_mb=2048, budget_mb=512, concurrency=2)
            assert backend.describe(1) is None
        finally:
            await backend.close()

    asyncio.run(main())
    log = (run_dir / "instance-1.log").read_text()
    assert "supervisor.start_failed" in log
    assert "AttestationError" in log
    calls = [json.loads(line) for line in log.splitlines() if "runtime.call_failed" in line]
    assert calls  # the runtime refused to start: its PREPARE failed
    assert {c["op"] for c in calls} == {"PREPARE"}  # and no request ever reached it
