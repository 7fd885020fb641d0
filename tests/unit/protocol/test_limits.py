"""The input limits an owner declares inside a model: parsing (hostile) and the check."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealserve.protocol import InputLimits
from sealserve.protocol._limits import MAX_BATCH_KEY, MAX_DIMS_KEY

#: Like MiniLM: ids and mask of [batch, seq], and a static-width feature input.
SHAPES: dict[str, tuple[int | None, ...] | None] = {
    "ids": (None, None),
    "mask": (None, None),
    "feat": (None, 8),
}


def test_without_a_declaration_the_static_shapes_still_apply() -> None:
    # Other keys, and other sealserve.* keys (the model zoo's), are not limits.
    metadata = {"producer": "anything", "sealserve.model": "minilm", "sealserve.seed": "0"}
    limits = InputLimits.from_metadata(SHAPES, metadata)
    assert limits.refusal({"ids": (10_000, 10_000), "feat": (10_000, 8)}) is None
    assert limits.refusal({"feat": (2, 9)}) == "shape"  # a static size
    assert limits.refusal({"ids": (2, 3, 4)}) == "shape"  # the rank
    assert limits.refusal({"other": (1,)}) == "shape"  # not an input


def test_the_declared_batch_and_dimensions_bound_the_dynamic_ones() -> None:
    metadata = {MAX_BATCH_KEY: "8", MAX_DIMS_KEY: json.dumps({"ids": [None, 128]})}
    limits = InputLimits.from_metadata(SHAPES, metadata)
    assert limits.refusal({"ids": (8, 128), "mask": (8, 10_000), "feat": (8, 8)}) is None
    assert limits.refusal({"ids": (9, 1)}) == "limit"  # max_batch
    assert limits.refusal({"feat": (9, 8)}) == "limit"  # max_batch on every dynamic batch
    assert limits.refusal({"ids": (1, 129)}) == "limit"  # max_dims
    assert limits.refusal({"feat": (9, 7)}) == "shape"  # a wrong shape says so first


def test_the_smaller_of_max_batch_and_a_declared_first_dimension_applies() -> None:
    limits = InputLimits(SHAPES, max_batch=8, max_dims={"ids": (4, None)})
    assert limits.refusal({"ids": (4, 1)}) is None
    assert limits.refusal({"ids": (5, 1)}) == "limit"
    assert limits.refusal({"mask": (8, 1)}) is None


def test_the_declaration_round_trips_through_metadata() -> None:
    limits = InputLimits(SHAPES, max_batch=48, max_dims={"ids": (None, 512), "feat": (None, 8)})
    again = InputLimits.from_metadata(SHAPES, limits.metadata())
    assert (again.max_batch, again.max_dims) == (48, {"ids": (None, 512), "feat": (None, 8)})
    assert InputLimits(SHAPES).metadata() == {}


def test_an_input_of_unknown_rank_takes_the_rank_its_maxima_give() -> None:
    limits = InputLimits({"x": None}, max_batch=2, max_dims={"x": (None, 3)})
    assert limits.refusal({"x": (2, 3)}) is None
    assert limits.refusal({"x": (3, 3)}) == "limit"
    assert limits.refusal({"x": (2, 3, 1)}) == "shape"
    assert InputLimits({"x": None}).refusal({"x": (5, 5, 5)}) is None


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({MAX_BATCH_KEY: "0"}, "not an int >= 1"),
        ({MAX_BATCH_KEY: "-3"}, "not an int >= 1"),
        ({MAX_BATCH_KEY: "08"}, "not an int >= 1"),
        ({MAX_BATCH_KEY: "4 "}, "not an int >= 1"),
        ({MAX_BATCH_KEY: "99999999999"}, "not an int >= 1"),
        ({MAX_DIMS_KEY: "{"}, "not valid JSON"),
        ({MAX_DIMS_KEY: "[1, 2]"}, "must be a JSON object"),
        ({MAX_DIMS_KEY: '{"ids": 5}'}, "must be a list"),
        ({MAX_DIMS_KEY: '{"ids": [true, 1]}'}, "must be a list of ints or nulls"),
        ({MAX_DIMS_KEY: '{"ids": [1.5, 1]}'}, "must be a list of ints or nulls"),
        ({MAX_DIMS_KEY: '{"ids": [0, 1]}'}, "must be an int from 1"),
        ({MAX_DIMS_KEY: '{"ids": [1]}'}, "has 2 dimensions, but 1 maxima"),
        ({MAX_DIMS_KEY: '{"nope": [1]}'}, "not an input of the model"),
        ({MAX_DIMS_KEY: '{"feat": [null, 9]}'}, "is static (8)"),
        ({MAX_DIMS_KEY: "[" * 100_000}, "at most"),
        ({MAX_DIMS_KEY: "[" * 60_000}, "not valid JSON"),
        ({"sealserve.max_batchh": "4"}, "does not know"),
        ({"sealserve.max_seq": "4"}, "does not know"),
    ],
)
def test_a_malformed_declaration_is_refused_saying_why(
    metadata: dict[str, str], reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        InputLimits.from_metadata(SHAPES, metadata)


def test_max_batch_needs_a_dynamic_batch() -> None:
    with pytest.raises(ValueError, match="no input of the model has a dynamic batch"):
        InputLimits({"x": (1, 3)}, max_batch=4)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@given(
    batch=st.none() | st.text(max_size=12),
    dims=st.none() | st.text(max_size=40) | _json.map(json.dumps),
)
def test_any_declaration_parses_or_is_a_value_error(batch: str | None, dims: str | None) -> None:
    metadata = {}
    if batch is not None:
        metadata[MAX_BATCH_KEY] = batch
    if dims is not None:
        metadata[MAX_DIMS_KEY] = dims
    try:
        limits = InputLimits.from_metadata(SHAPES, metadata)
    except ValueError:
        return
    # What parses is a declaration that round-trips and checks any shape without raising.
    assert InputLimits.from_metadata(SHAPES, limits.metadata()).metadata() == limits.metadata()
    assert limits.refusal({"ids": (1, 1), "mask": (1, 1), "feat": (1, 8)}) in (None, "limit")
