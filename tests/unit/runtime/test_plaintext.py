"""A plaintext buffer hands out bytes that it can wipe in place."""

from __future__ import annotations

import pytest

from sealserve.runtime import PlaintextBuffer


def test_a_plaintext_buffer_is_bytes_that_get_wiped() -> None:
    buffer = PlaintextBuffer(1000)
    buffer.view[:] = b"\xaa" * 1000
    data = buffer.data
    assert isinstance(data, bytes)
    assert data == b"\xaa" * 1000
    buffer.wipe()
    assert data == bytes(1000)  # the very object onnxruntime was given is now zeros
    with pytest.raises(ValueError, match="wiped"):
        _ = buffer.view
    buffer.wipe()
