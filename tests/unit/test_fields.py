"""The ``fields`` filter's values looked up by hash agree with :func:`json_equal`.

A filter lists up to hundreds of values for a path; the matcher and the rule
preview look a message's value up in a :class:`~fmn.fields.ValueSet` instead of
comparing it with each.  Whatever the values, the answer must be the one the
comparison gives: ``true`` is not ``1``, ``1`` is ``1.0``, NaN equals nothing,
objects compare by keys and values, arrays item by item.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn.fields import ValueSet, json_equal

pytestmark = pytest.mark.unit

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, 1.0, -1.0, 2.5]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=3),
    st.sampled_from(["", "1", "true", "null"]))
_json = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                      st.dictionaries(st.text(max_size=2), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=600, deadline=None)
@given(value=_json, listed=st.lists(_json, max_size=6))
def test_a_lookup_agrees_with_comparing_each_value(value: Any, listed: list[Any]) -> None:
    assert ValueSet(listed).matches(value) == any(json_equal(value, v) for v in listed)


@settings(max_examples=300, deadline=None)
@given(value=_json)
def test_a_value_is_found_among_its_equals(value: Any) -> None:
    assert ValueSet([value]).matches(value) == json_equal(value, value)


@pytest.mark.parametrize(("value", "listed", "found"), [
    (1, [1.0], True), (1.0, [1], True), (True, [1], False), (1, [True], False),
    (0, [False], False), (False, [False], True), (None, [None], True), ("1", [1], False),
    (math.nan, [math.nan], False), ([math.nan], [[math.nan]], False),
    ({"a": [1, {"b": None}]}, [{"a": [1.0, {"b": None}]}], True),
    ({"a": 1}, [{"a": 1, "b": 2}], False), ([1, 2], [[2, 1]], False), ([1], [(1,)], True),
    ({"a": True}, [{"a": 1}], False),
])
def test_json_semantics(value: Any, listed: list[Any], found: bool) -> None:
    assert ValueSet(listed).matches(value) is found


def test_a_value_nested_deeper_than_every_listed_one_is_not_walked() -> None:
    deep: Any = "x"
    for _ in range(5000):  # far past the recursion limit, were it walked
        deep = [deep]
    assert not ValueSet([[["x"]], "x"]).matches(deep)
    assert not ValueSet(["x"]).matches({"a": deep})


def test_values_stay_a_tuple_for_their_other_readers() -> None:
    values = ValueSet(["a", 1, {"b": 2}])
    assert values == ("a", 1, {"b": 2}) and list(values) == ["a", 1, {"b": 2}]


class _Unwalkable(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise AssertionError("walked")


def test_a_value_bigger_than_every_listed_one_is_not_walked() -> None:
    """A message's array of millions was turned into a key whole (half a second)
    before the lookup, where comparing stops at the length: it is given up at it."""
    big = _Unwalkable(range(1000))
    assert not ValueSet([[1, 2], {"a": [3]}]).matches(big)
    assert not ValueSet([{"a": [1, 2]}]).matches({"a": big})
    assert not ValueSet(["x"]).matches(big)
    assert ValueSet([[1, [2, 3]]]).matches([1.0, [2, 3]])  # as big as listed: still found
    assert not ValueSet([[1, [2, 3]]]).matches([1, [2, 3, 4]])
