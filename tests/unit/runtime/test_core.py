"""SealedRuntime with a real KeyService in process, real onnxruntime, models held in memory."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from sealserve.crypto import RequestKey
from sealserve.ecall import timings
from sealserve.errors import (
    AccessDenied,
    DeadlineExceeded,
    InvalidEnvelope,
    MemoryBudgetExceeded,
    ModelNotAvailable,
)
from sealserve.protocol import encode_tensors, seal_input, unseal_output
from sealserve.runtime import BAD_INPUT, RuntimeOptions, SealedRuntime
from sealserve.runtime._core import MAX_INPUT_AGE_S
from tests.unit.runtime.graphs import (
    dense_model,
    marker_floats,
    marker_model,
    plain_run,
    slow_model,
)
from tests.unit.runtime.keyservice import InProcessKeyService


@pytest.fixture
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path_factory.mktemp("ks"), release_ttl_s=60.0)
    try:
        yield harness
    finally:
        harness.close()


def make_runtime(ks: InProcessKeyService, **options: Any) -> SealedRuntime:
    opts = RuntimeOptions(**options)
    return SealedRuntime(
        options=opts, keys=ks.broker(cache=not opts.baseline), source=ks.source, clock=ks.clock
    )


def infer(
    runtime: SealedRuntime,
    ks: InProcessKeyService,
    model_id: str,
    key: RequestKey,
    inputs: dict[str, Any],
    *,
    request_id: str = "req-1",
    sealed: bytes | None = None,
    deadline: float | None = None,
) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, float]]:
    user = ks.user.principal_id
    if sealed is None:
        sealed = seal_input(
            key, inputs, model_id=model_id, user_id=user, request_id=request_id, clock=ks.clock
        )
    output = runtime.infer(
        model_id=model_id,
        user_id=user,
        request_id=request_id,
        sealed_input=memoryview(sealed),
        deadline=deadline,
    )
    buffer = bytearray(output.size)
    output.write(memoryview(buffer))
    opened = unseal_output(
        key, bytes(buffer), model_id=model_id, user_id=user, request_id=request_id
    )
    return opened, output.timings.to_dict()


def x_of(n: int, seed: int = 1) -> dict[str, Any]:
    return {"X": np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)}


def test_sealed_inference_equals_plain_onnxruntime(ks: InProcessKeyService) -> None:
    weights = marker_floats(3, 256)
    onnx = marker_model(weights)
    model_id, key = ks.add_model("marker", onnx)
    dense = dense_model(5)
    dense_id, dense_key = ks.add_model("dense", dense)
    runtime = make_runtime(ks)
    inputs = {"X": marker_floats(4, 256)}
    outputs, stages = infer(runtime, ks, model_id, key, inputs)
    expected = plain_run(onnx, inputs)
    assert set(outputs) == {"Y", "Z"}
    for name in expected:
        assert np.array_equal(outputs[name], expected[name])
    assert outputs["Y"].tobytes() == inputs["X"].tobytes()
    for stage in (
        timings.ATTESTATION_KEY_RELEASE,
        timings.MODEL_FETCH,
        timings.MODEL_UNSEAL_SESSION,
        timings.INPUT_UNSEAL,
        timings.INFERENCE,
        timings.OUTPUT_SEAL,
    ):
        assert stages[stage] >= 0
    d_out, _ = infer(runtime, ks, dense_id, dense_key, x_of(64))
    assert np.allclose(d_out["Y"], plain_run(dense, x_of(64))["Y"], rtol=1e-5, atol=1e-5)


def test_warm_requests_hit_the_key_and_model_caches(ks: InProcessKeyService) -> None:
    model_id, key = ks.add_model("dense", dense_model(1))
    runtime = make_runtime(ks)
    infer(runtime, ks, model_id, key, x_of(64), request_id="a")
    _, warm = infer(runtime, ks, model_id, key, x_of(64), request_id="b")
    assert ks.releases == 1
    assert ks.source.fetches[model_id] == 1
    assert ks.source.released == 1  # the sealed model's memory was given back
    assert timings.ATTESTATION_KEY_RELEASE not in warm
    assert timings.MODEL_FETCH not in warm
    assert set(warm) >= {timings.INPUT_UNSEAL, timings.INFERENCE, timings.OUTPUT_SEAL}
    stats = runtime.stats()
    assert stats["models"]["loads"] == 1
    assert stats["models"]["hits"] == 1
    json.dumps(stats)  # what the host may know is plain JSON


def test_tampered_inputs_and_wrong_keys_are_the_fixed_error(ks: InProcessKeyService) -> None:
    model_id, key = ks.add_model("dense", dense_model(2))
    runtime = make_runtime(ks)
    user = ks.user.principal_id
    good = seal_input(
        key, x_of(64), model_id=model_id, user_id=user, request_id="r1", clock=ks.clock
    )
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    wrong_key = seal_input(
        RequestKey.generate(), x_of(64), model_id=model_id, user_id=user, request_id="r1",
        clock=ks.clock,
    )  # fmt: skip
    other_request = seal_input(
        key, x_of(64), model_id=model_id, user_id=user, request_id="r0", clock=ks.clock
    )
    bad_cases = [bytes(flipped), wrong_key, other_request, good[:-1], b"\x01" * 10]
    for bad in bad_cases:
        with pytest.raises(InvalidEnvelope) as info:
            infer(runtime, ks, model_id, key, {}, request_id="r1", sealed=bad)
        assert str(info.value) == InvalidEnvelope.MESSAGE
    outputs, _ = infer(runtime, ks, model_id, key, x_of(64), request_id="r1", sealed=good)
    assert outputs["Y"].shape == (1, 16)


def test_an_output_opens_only_for_its_own_request(ks: InProcessKeyService) -> None:
    model_id, key = ks.add_model("dense", dense_model(3))
    runtime = make_runtime(ks)
    user = ks.user.principal_id
    sealed = seal_input(
        key, x_of(64), model_id=model_id, user_id=user, request_id="r1", clock=ks.clock
    )
    output = runtime.infer(
        model_id=model_id, user_id=user, request_id="r1", sealed_input=memoryview(sealed),
        deadline=None,
    )  # fmt: skip
    buffer = bytearray(output.size)
    output.write(memoryview(buffer))
    envelope = bytes(buffer)
    for request_id, model in (("r2", model_id), ("r1", model_id + "x")):
        with pytest.raises(InvalidEnvelope):
            unseal_output(key, envelope, model_id=model, user_id=user, request_id=request_id)
    assert unseal_output(key, envelope, model_id=model_id, user_id=user, request_id="r1")


def test_inputs_that_do_not_fit_give_one_message_that_reveals_nothing(
    ks: InProcessKeyService,
) -> None:
    model_id, key = ks.add_model("dense", dense_model(4))
    runtime = make_runtime(ks)
    secret_name = "patient-4711-diagnosis"
    cases = [
        encode_tensors({secret_name: np.zeros((1, 64), np.float32)}),
        encode_tensors({"X": np.zeros((1, 64), np.int64)}),
        encode_tensors({"X": np.zeros((3, 7), np.float32)}),
        b"not a tensor container at all: " + secret_name.encode(),
    ]
    for plaintext in cases:
        with pytest.raises(ValueError, match="do not match") as info:
            infer(runtime, ks, model_id, key, {}, sealed=seal_input(
                key, plaintext, model_id=model_id, user_id=ks.user.principal_id,
                request_id="req-1", clock=ks.clock,
            ))  # fmt: skip
        assert str(info.value) == BAD_INPUT
        assert secret_name not in str(info.value)
    assert infer(runtime, ks, model_id, key, x_of(64))[0]["Y"].shape == (1, 16)


def test_a_passed_deadline_is_refused_before_any_work(ks: InProcessKeyService) -> None:
    model_id, key = ks.add_model("dense", dense_model(5))
    runtime = make_runtime(ks)
    with pytest.raises(DeadlineExceeded) as info:
        infer(runtime, ks, model_id, key, x_of(64), deadline=ks.clock.monotonic())
    assert info.value.retryable
    assert ks.releases == 0


def test_concurrent_requests_over_three_models_load_each_model_once(
    ks: InProcessKeyService,
) -> None:
    models = [dense_model(10 + i, inputs=128, outputs=32) for i in range(3)]
    ids = [ks.add_model(f"m{i}", onnx) for i, onnx in enumerate(models)]
    runtime = make_runtime(ks, workers=16)
    ks.source.gate = gate = __import__("threading").Event()

    def one(i: int) -> tuple[int, np.ndarray[Any, Any]]:
        model_id, key = ids[i % 3]
        outputs, _ = infer(runtime, ks, model_id, key, x_of(128, seed=i), request_id=f"r{i}")
        return i, outputs["Y"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        gate.set()  # every load was asked for while the first was held up
        results = [f.result(60) for f in futures]
    for i, y in results:
        expected = plain_run(models[i % 3], x_of(128, seed=i))["Y"]
        assert np.allclose(y, expected, rtol=1e-5, atol=1e-5)
    for model_id, _ in ids:
        assert ks.source.fetches[model_id] == 1
    assert ks.releases == 3
    assert runtime.stats()["models"]["loads"] == 3


def test_baseline_mode_rebuilds_keys_and_model_for_every_request(
    ks: InProcessKeyService,
) -> None:
    model_id, key = ks.add_model("dense", dense_model(6))
    runtime = make_runtime(ks, baseline=True)
    for i in range(3):
        _, stages = infer(runtime, ks, model_id, key, x_of(64), request_id=f"r{i}")
        assert stages[timings.ATTESTATION_KEY_RELEASE] > 0
        assert timings.MODEL_UNSEAL_SESSION in stages
    assert ks.releases == 3
    assert ks.calls["/v1/attestation"] == 3  # the KeyService is attested afresh each time
    assert ks.source.fetches[model_id] == 3
    stats = runtime.stats()
    assert stats["models"]["models"] == []
    assert stats["keys"]["entries"] == 0


def test_a_user_without_a_grant_is_denied(ks: InProcessKeyService) -> None:
    model_id, key = ks.add_model("dense", dense_model(7), grant=False)
    runtime = make_runtime(ks)
    with pytest.raises(AccessDenied):
        infer(runtime, ks, model_id, key, x_of(64))
    assert ks.source.fetches[model_id] == 0


def test_a_revoked_grant_stops_being_served_within_the_check_bound(
    ks: InProcessKeyService,
) -> None:
    """Issue 10, item 9.  Revocation took up to the key cache's TTL (300 s).  Now a hit older
    than ``revocation_check_s`` (5 s) first asks the KeyService what changed: the revoked
    pair is refused 5 s after the revoke, long before the TTL, without a release."""
    model_id, key = ks.add_model("dense", dense_model(8))
    runtime = make_runtime(ks)
    infer(runtime, ks, model_id, key, x_of(64), request_id="a")
    ks.owner.revoke("dense", ks.user.principal_id)
    infer(runtime, ks, model_id, key, x_of(64), request_id="b")  # still within the bound
    check_s = ks.settings.revocation_check_s
    ks.clock.advance(check_s)
    assert check_s < ks.settings.release_ttl_s / 10
    with pytest.raises(AccessDenied):
        infer(runtime, ks, model_id, key, x_of(64), request_id="c")
    assert ks.calls["/v1/revocations"] >= 1
    assert runtime.stats()["keys"]["dropped_by_epoch"] == 1


def test_a_revocation_drops_only_the_keys_it_touched(ks: InProcessKeyService) -> None:
    a_id, a_key = ks.add_model("a", dense_model(9))
    b_id, b_key = ks.add_model("b", dense_model(10))
    runtime = make_runtime(ks)
    infer(runtime, ks, a_id, a_key, x_of(64), request_id="a1")
    infer(runtime, ks, b_id, b_key, x_of(64), request_id="b1")
    releases = ks.releases
    ks.owner.revoke("a", ks.user.principal_id)
    ks.clock.advance(ks.settings.revocation_check_s)
    infer(runtime, ks, b_id, b_key, x_of(64), request_id="b2")  # confirmed by a poll
    assert ks.releases == releases  # b's keys were kept: no new release
    assert runtime.stats()["keys"]["dropped_by_epoch"] == 1
    with pytest.raises(AccessDenied):
        infer(runtime, ks, a_id, a_key, x_of(64), request_id="a2")


def test_keys_a_poll_cannot_confirm_are_not_used(ks: InProcessKeyService) -> None:
    """The host withholds the polls: the keys go unconfirmed and are not used past the bound;
    the runtime releases again (and a revoked grant is refused)."""
    model_id, key = ks.add_model("dense", dense_model(17))
    ks.block_polls = True
    runtime = make_runtime(ks)
    infer(runtime, ks, model_id, key, x_of(64), request_id="a")
    ks.owner.revoke("dense", ks.user.principal_id)
    ks.clock.advance(ks.settings.revocation_check_s)
    with pytest.raises(AccessDenied):
        infer(runtime, ks, model_id, key, x_of(64), request_id="b")
    assert ks.calls["/v1/revocations"] >= 1


def test_a_rotated_model_key_reloads_the_model(ks: InProcessKeyService) -> None:
    """Issue 10, item 4(b): after a rotation the old version is no longer served for the rest
    of the key cache's TTL, but from the next poll on (within the check bound)."""
    onnx, new = dense_model(11), dense_model(18)
    model_id, key = ks.add_model("dense", onnx)
    runtime = make_runtime(ks)
    infer(runtime, ks, model_id, key, x_of(64), request_id="a")
    ks.rotate("dense", new)
    ks.clock.advance(ks.settings.revocation_check_s)
    outputs, stages = infer(runtime, ks, model_id, key, x_of(64), request_id="b")
    assert timings.MODEL_UNSEAL_SESSION in stages
    assert ks.source.fetches[model_id] == 2
    assert np.allclose(outputs["Y"], plain_run(new, x_of(64))["Y"], rtol=1e-5, atol=1e-5)


def test_a_stored_model_of_another_key_version_is_not_loaded(ks: InProcessKeyService) -> None:
    onnx = dense_model(12)
    model_id, key = ks.add_model("dense", onnx)
    stale = ks.source.models[model_id]
    ks.rotate("dense", onnx)
    ks.source.models[model_id] = stale  # the store still holds the old sealing
    runtime = make_runtime(ks)
    with pytest.raises(ModelNotAvailable, match="key version 1"):
        infer(runtime, ks, model_id, key, x_of(64))


def test_a_reused_key_does_not_let_the_store_roll_the_model_back(
    ks: InProcessKeyService,
) -> None:
    """Issue 10, item 4(a).  The owner updates its model reusing the key (``owner upload
    --key-file``); the store serves the old sealed file under the new version's manifest.  It
    unseals under that key, but it is bound to version 1 and the KeyService released version
    2: refused, and the model the owner uploaded last is what runs."""
    old, new = dense_model(15), dense_model(16)
    model_id, key = ks.add_model("dense", old)
    stale_bytes, _ = ks.source.models[model_id]
    ks.update_reusing_key("dense", new)
    good = ks.source.models[model_id]
    ks.source.models[model_id] = (stale_bytes, 2)  # the manifest lies: "version 2"
    runtime = make_runtime(ks)
    with pytest.raises(ModelNotAvailable, match="version 1; the KeyService says version 2"):
        infer(runtime, ks, model_id, key, x_of(64), request_id="a")
    # Even with the header rewritten to say 2, the authenticated stream refuses it.
    forged = stale_bytes[:40] + (2).to_bytes(4, "big") + stale_bytes[44:]
    ks.source.models[model_id] = (forged, 2)
    with pytest.raises(ModelNotAvailable, match="does not unseal"):
        infer(runtime, ks, model_id, key, x_of(64), request_id="b")
    ks.source.models[model_id] = good
    outputs, _ = infer(runtime, ks, model_id, key, x_of(64), request_id="c")
    assert np.allclose(outputs["Y"], plain_run(new, x_of(64))["Y"], rtol=1e-5, atol=1e-5)


def test_a_model_sealed_under_another_key_is_not_available(ks: InProcessKeyService) -> None:
    model_id, key = ks.add_model("dense", dense_model(13))
    other_id, _ = ks.add_model("other", dense_model(14))
    ks.source.models[model_id] = ks.source.models[other_id]
    runtime = make_runtime(ks)
    with pytest.raises(ModelNotAvailable, match="does not unseal"):
        infer(runtime, ks, model_id, key, x_of(64))


def test_the_memory_budget_evicts_idle_models_and_refuses_giants(
    ks: InProcessKeyService,
) -> None:
    small = [dense_model(20 + i, inputs=256, outputs=256) for i in range(3)]  # ~256 KiB each
    ids = [ks.add_model(f"s{i}", onnx) for i, onnx in enumerate(small)]
    giant_id, giant_key = ks.add_model("giant", dense_model(30, inputs=1024, outputs=1024))
    runtime = make_runtime(ks, memory_budget_bytes=2 << 20, memory_factor=3.0)
    for i, (model_id, key) in enumerate(ids * 2):
        outputs, _ = infer(runtime, ks, model_id, key, x_of(256), request_id=f"r{i}")
        expected = plain_run(small[i % 3], x_of(256))["Y"]
        assert np.allclose(outputs["Y"], expected, rtol=1e-4, atol=1e-4)
    stats = runtime.stats()["models"]
    assert stats["used_bytes"] <= stats["budget_bytes"]
    assert stats["evictions"] >= 3
    with pytest.raises(MemoryBudgetExceeded):
        infer(runtime, ks, giant_id, giant_key, {"X": np.zeros((1, 1024), np.float32)})


def test_load_and_evict(ks: InProcessKeyService) -> None:
    model_id, key = ks.add_model("dense", dense_model(15))
    runtime = make_runtime(ks)
    stages = runtime.load(model_id=model_id, user_id=ks.user.principal_id, deadline=None)
    assert timings.MODEL_UNSEAL_SESSION in stages
    assert runtime.evict(model_id) is True
    assert runtime.evict(model_id) is False
    _, stages = infer(runtime, ks, model_id, key, x_of(64))
    assert timings.MODEL_FETCH in stages  # evicted, so fetched again
    with pytest.raises(ValueError, match="user_id"):
        runtime.load(model_id=model_id, user_id="nobody", deadline=None)


def test_the_host_cannot_widen_the_replay_window_of_sealed_inputs(ks: InProcessKeyService) -> None:
    # The age is the host's argument: it may make the window shorter, never longer.
    for wider in (MAX_INPUT_AGE_S + 1, 1e12, float("inf"), float("nan"), 0.0, None):
        with pytest.raises(ValueError, match="max_input_age_s"):
            RuntimeOptions(max_input_age_s=wider)  # type: ignore[arg-type]
    # A captured input replayed just past the bound is the fixed error.
    model_id, key = ks.add_model("dense", dense_model(3))
    runtime = make_runtime(ks)
    user = ks.user.principal_id
    captured = seal_input(
        key, x_of(64), model_id=model_id, user_id=user, request_id="r1", clock=ks.clock
    )
    infer(runtime, ks, model_id, key, {}, request_id="r1", sealed=captured)
    ks.clock.advance(MAX_INPUT_AGE_S + 1)
    with pytest.raises(InvalidEnvelope):
        infer(runtime, ks, model_id, key, {}, request_id="r1", sealed=captured)


def test_an_inference_whose_deadline_passes_is_stopped(ks: InProcessKeyService) -> None:
    """Issue 10.5: a request whose deadline passed kept computing (about 20 CPU-seconds
    after a 2 s deadline).  The run is now stopped between two kernels when the deadline
    passes.  Uncancelled, this input runs for minutes (2,000 products of 1024 x 1024)."""
    model_id, key = ks.add_model("endless", slow_model(size=1024, depth=2000))
    runtime = make_runtime(ks)
    runtime.load(model_id=model_id, user_id=ks.user.principal_id, deadline=None)
    x = {"X": np.ones((1024, 1024), np.float32)}
    with pytest.raises(DeadlineExceeded, match="during inference"):
        infer(runtime, ks, model_id, key, x, deadline=ks.clock.monotonic() + 0.5)
    # The model still serves, and a run within its deadline is not stopped.
    small_id, small_key = ks.add_model("quick", dense_model(4))
    outputs, _ = infer(
        runtime, ks, small_id, small_key, x_of(64), deadline=ks.clock.monotonic() + 60
    )
    assert outputs["Y"].shape == (1, 16)
