"""The call surface's frames, its errors, the launch pin, timings."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable

import pytest

from sealserve.attest import Policy, TrustAnchors
from sealserve.ecall import pin_from_launch_config, runtime_launch_config, timings, wire
from sealserve.errors import (
    AccessDenied,
    ConfigError,
    DeadlineExceeded,
    InvalidEnvelope,
    IPCError,
    KeyServiceError,
    MemoryBudgetExceeded,
    ModelNotAvailable,
    RuntimeError_,
    RuntimeUnavailable,
)

MODEL = "ab" * 32 + "/resnet"
USER = "cd" * 32


def frame(meta: dict[str, object] | None, payload: bytes, **kw: object) -> bytes:
    raw = wire.encode_meta(meta)
    buffer = bytearray(wire.frame_size(len(raw), len(payload)))
    offset = wire.write_header(
        memoryview(buffer),
        kind=kw.get("kind", wire.Kind.CALL),  # type: ignore[arg-type]
        op=kw.get("op", wire.Op.INFER),  # type: ignore[arg-type]
        status=kw.get("status", wire.Status.OK),  # type: ignore[arg-type]
        call_id=int(kw.get("call_id", 7)),  # type: ignore[call-overload]
        meta=raw,
        payload_len=len(payload),
    )
    buffer[offset:] = payload
    return bytes(buffer)


def test_a_frame_round_trips_with_an_aligned_payload() -> None:
    data = frame({"model_id": MODEL, "timeout_s": 1.5}, b"sealed" * 100, call_id=2**40)
    parsed = wire.parse_frame(memoryview(data))
    assert parsed.kind is wire.Kind.CALL
    assert parsed.op is wire.Op.INFER
    assert parsed.call_id == 2**40
    assert parsed.meta == {"model_id": MODEL, "timeout_s": 1.5}
    assert bytes(parsed.payload) == b"sealed" * 100
    assert (len(data) - len(parsed.payload)) % 64 == 0


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x02" + b[5:], "version"),
        (lambda b: b[:5] + b"\x09" + b[6:], "malformed frame"),  # unknown kind
        (lambda b: b[:6] + b"\xee" + b[6 + 1 :], "malformed frame"),  # unknown op
        (lambda b: b[:7] + b"\x01" + b[8:], "a call carries a status"),
        (lambda b: b[:20] + b"\x01" + b[21:], "reserved"),
        (lambda b: b + b"\x00", "header says"),
        (lambda b: b[:-1], "header says"),
        (lambda b: b[:40], "header says"),
        (lambda b: b[:3], "shorter than the header"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(
    mutate: Callable[[bytes], bytes], reason: str
) -> None:
    data = frame({"a": 1}, b"payload")
    with pytest.raises(IPCError, match=reason):
        wire.parse_frame(memoryview(mutate(data)))


def test_meta_must_be_a_json_object_and_padding_zero() -> None:
    for meta in (b"[1,2]", b"{bad json"):
        data = bytearray(frame({"x": "y" * (len(meta) - 8)}, b""))
        data[32 : 32 + len(meta)] = meta
        struct.pack_into("<I", data, 16, len(meta))
        with pytest.raises(IPCError):
            wire.parse_frame(memoryview(bytes(data)))
    padded = bytearray(frame({"a": 1}, b"p"))
    padded[40] = 1  # inside the padding after the 7-byte meta
    with pytest.raises(IPCError, match="padding"):
        wire.parse_frame(memoryview(bytes(padded)))
    with pytest.raises(ValueError, match="at most"):
        wire.encode_meta({"x": "y" * wire.MAX_META_BYTES})


@pytest.mark.parametrize(
    "exc",
    [
        InvalidEnvelope(),
        AccessDenied(),
        DeadlineExceeded("the deadline passed"),
        ModelNotAvailable("no model 'm'"),
        MemoryBudgetExceeded("too big"),
        KeyServiceError("answered 500"),
        RuntimeUnavailable("restarting"),
        RuntimeError_("bug"),
        ValueError("bad id"),
    ],
)
def test_errors_keep_their_class_and_message_across_the_boundary(exc: Exception) -> None:
    status, message = wire.status_for(exc)
    back = wire.error_for(status, message)
    assert type(back) is type(exc)
    assert str(back) == str(exc)


def test_foreign_errors_say_nothing_but_their_type() -> None:
    status, message = wire.status_for(KeyError("a secret key name"))
    assert status is wire.Status.INTERNAL
    assert message == "internal error (KeyError)"
    retry = wire.error_for(wire.Status.KEYSERVICE_ERROR, "unreachable", retryable=True)
    assert isinstance(retry, KeyServiceError)
    assert retry.retryable
    assert not KeyServiceError("x").retryable


def test_the_launch_config_carries_the_keyservice_pin() -> None:
    policy = Policy(measurements=frozenset({"11" * 32}))
    trust = TrustAnchors(simulated_platform_keys=frozenset({b"\x01" * 32}), accept_dcap=False)
    config = runtime_launch_config(keyservice_policy=policy, trust=trust)
    assert all(isinstance(v, str) for v in config.values())
    assert json.loads(config["keyservice_policy"])["measurements"] == ["11" * 32]
    back_policy, back_trust = pin_from_launch_config(config)
    assert back_policy == policy
    assert back_trust == trust
    with pytest.raises(ConfigError, match="no 'keyservice_policy'"):
        pin_from_launch_config({})
    with pytest.raises(ConfigError, match="unknown keys"):
        pin_from_launch_config({**config, "debug": "1"})
    with pytest.raises(ConfigError, match="invalid"):
        pin_from_launch_config({**config, "platform_keys": "zz"})


def test_the_pin_carries_which_hardware_the_keyservice_may_attest_with() -> None:
    from sealserve.attest import ReferenceValues, TpmAnchors, TpmReference
    from sealserve.attest._synthetic import SyntheticAmd, SyntheticTpm

    policy = Policy(reference_values=(ReferenceValues(tpm=TpmReference(pcrs={0: {"00" * 32}})),))
    default = TrustAnchors(simulated_platform_keys=frozenset({b"\x01" * 32}))
    plain = runtime_launch_config(keyservice_policy=policy, trust=default)
    # AMD's pins are the default: nothing new in the config, so existing pins measure the same.
    assert set(plain) == {"keyservice_policy", "platform_keys", "accept_dcap"}
    assert pin_from_launch_config(plain) == (policy, default)
    roots = TpmAnchors(roots=SyntheticTpm().anchors().roots)
    for trust in (
        dataclasses.replace(default, snp=None),
        dataclasses.replace(default, tpm=roots),
        # a test DCAP root (instead of Intel's) is measured into the pin too
        dataclasses.replace(default, dcap_root_ca_der=SyntheticTpm().anchors().roots[0]),
    ):
        config = runtime_launch_config(keyservice_policy=policy, trust=trust)
        assert config != plain
        assert pin_from_launch_config(config) == (policy, trust)
    # Certificates and CRLs stay out of a pin (evidence brings its own chain)...
    with pytest.raises(ValueError, match="certificates or CRLs"):
        runtime_launch_config(
            keyservice_policy=policy,
            trust=dataclasses.replace(default, snp=SyntheticAmd().anchors()),
        )
    # ...while other ARK pins (a test chain) are measured into it, as the KeyService's are.
    test_ark = dataclasses.replace(default, snp=SyntheticAmd().anchors(with_chain=False))
    pinned = runtime_launch_config(keyservice_policy=policy, trust=test_ark)
    assert pinned["snp_ark_pins"].startswith("Milan=")
    assert pin_from_launch_config(pinned) == (policy, test_ark)


def test_stage_timer_knows_only_the_stage_names() -> None:
    timer = timings.StageTimer()
    timer.add(timings.INFERENCE, 0.0042)
    with timer.stage(timings.OUTPUT_SEAL):
        pass
    assert timer.to_dict()[timings.INFERENCE] == 4.2
    assert set(timer.to_dict()) == {timings.INFERENCE, timings.OUTPUT_SEAL}
    with pytest.raises(ValueError, match="unknown stage"):
        timer.add("sleeping", 1.0)
    assert timings.COLD_START_STAGES[0] == timings.SANDBOX_START
