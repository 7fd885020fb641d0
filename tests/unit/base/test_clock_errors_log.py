from __future__ import annotations

import io
import json
import logging

import pytest

from sealserve import errors
from sealserve._clock import SYSTEM_CLOCK, Clock, ManualClock
from sealserve._log import configure_logging, get_logger


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=100.0)
    assert isinstance(clock, Clock)
    assert clock.time() == 100.0
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (102.5, 2.5)
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(-1)


def test_system_clock_is_a_clock() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert SYSTEM_CLOCK.monotonic() <= SYSTEM_CLOCK.monotonic()


def test_every_error_derives_from_root() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.SealserveError), name


@pytest.mark.parametrize(
    "cls", [errors.InvalidEnvelope, errors.AttestationError, errors.AccessDenied]
)
def test_security_errors_have_one_fixed_message(cls: type[errors.SealserveError]) -> None:
    assert str(cls()) == str(cls())
    assert str(cls()) == cls.MESSAGE  # type: ignore[attr-defined]


def test_retryable_flags() -> None:
    assert errors.RuntimeUnavailable().retryable
    assert errors.CapacityExhausted().retryable
    assert not errors.InvalidEnvelope().retryable


def test_structured_log_withholds_bytes() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    get_logger("sealserve.test").event(
        "thing.happened", level=logging.INFO, secret=b"plaintext-marker", n=3, who="alice"
    )
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "thing.happened"
    assert line["n"] == 3
    assert line["who"] == "alice"
    assert "plaintext-marker" not in stream.getvalue()
    assert line["secret"] == "<16 bytes withheld>"
