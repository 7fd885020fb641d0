"""Characterization and end-to-end benchmarks (``sealserve bench …``).

Benchmarks are not tests: each one measures its baseline in the same run, interleaves repeats,
reports medians and prints ratios.  None of them gates CI on an absolute time.
"""

__all__: list[str] = []
