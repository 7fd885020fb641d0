"""Process tuning of the runtime: the heap keeps request-sized buffers."""

from __future__ import annotations

import sys

import pytest

from sealserve.runtime._malloc import keep_buffers_in_heap


@pytest.mark.parametrize(
    ("name", "value"),
    [("mmap_from", 0), ("mmap_from", -1), ("keep_bytes", 1 << 31), ("keep_bytes", True)],
)
def test_out_of_range_thresholds_are_refused(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        keep_buffers_in_heap(**{name: value})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_accepts_the_thresholds() -> None:
    assert keep_buffers_in_heap() is True
