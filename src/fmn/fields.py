"""The `fields` filter's JSON semantics, shared by both engines.

The ``fields`` filter compares JSON values: ``true`` is not ``1`` (Python
would say it is), while ``1`` and ``1.0`` are the same JSON number.  A dotted
path walks objects by key and arrays by a decimal index; anything else means
there is no value there, and the filter fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MISSING: Any = object()
#: :func:`json_key` of a value equal to nothing it could be compared with
NO_MATCH: Any = object()
#: How deep a listed value may nest (the preferences allow 32 levels)
_LISTED_DEPTH = 64


def json_equal(a: Any, b: Any) -> bool:
    """Equality of two decoded JSON values, with booleans distinct from numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, Mapping):
        if not isinstance(b, Mapping) or a.keys() != b.keys():
            return False
        return all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        if not isinstance(b, list | tuple) or len(a) != len(b):
            return False
        return all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def lookup_path(body: Any, path: Sequence[str]) -> Any:
    """The value at a split dotted path in ``body``, or :data:`MISSING`."""
    node = body
    for part in path:
        if isinstance(node, Mapping):
            if part not in node:
                return MISSING
            node = node[part]
        elif isinstance(node, list) and len(part) <= 9 and part.isascii() and part.isdigit():
            index = int(part)
            if index >= len(node):
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


def json_key(value: Any, depth: int, nodes: int = sys.maxsize) -> Any:
    """A hashable key of a decoded JSON value: two values' keys are equal exactly when
    :func:`json_equal` says the values are.  :data:`NO_MATCH` for a value equal to
    nothing here: NaN or a container holding one (NaN equals nothing), or one nesting
    more than ``depth`` containers or holding more than ``nodes`` values, itself and
    every item at every level counted (bigger than every value it is compared with:
    a message's array of millions is given up at its length, not walked)."""
    if type(value) is str:  # the usual message value: as below, without the walk
        return ("x", str, value)
    return _key(value, depth, [nodes])


def _key(value: Any, depth: int, left: list[int]) -> Any:
    left[0] -= 1
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value) if value == value else NO_MATCH  # 1 and 1.0: one key
    if isinstance(value, list | tuple):
        if depth <= 0 or len(value) > left[0]:
            return NO_MATCH
        keys = []
        for v in value:
            key = _key(v, depth - 1, left)
            if key is NO_MATCH:
                return NO_MATCH
            keys.append(key)
        return ("a", tuple(keys))
    if isinstance(value, Mapping):
        if depth <= 0 or len(value) > left[0]:
            return NO_MATCH
        items = []
        for k, v in value.items():
            key = _key(v, depth - 1, left)
            if key is NO_MATCH:
                return NO_MATCH
            items.append((k, key))
        return ("o", frozenset(items))
    try:  # a string, null: equal to a value of its own type that == says is equal
        hash(value)
    except TypeError:
        return NO_MATCH
    return ("x", type(value), value)


def _depth(value: Any) -> int:
    if isinstance(value, Mapping):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _nodes(value: Any) -> int:
    if isinstance(value, Mapping):
        return 1 + sum(map(_nodes, value.values()))
    if isinstance(value, list | tuple):
        return 1 + sum(map(_nodes, value))
    return 1


class ValueSet(tuple):  # type: ignore[type-arg]
    """The values a ``fields`` filter lists for one path (a tuple of them), with
    ``matches(value)``: whether ``value`` is :func:`json_equal` to one of them, by one
    hash lookup instead of a comparison with each (a filter of hundreds of values was
    tens of milliseconds of the matcher's time for every message it saw).  A value
    deeper or bigger than every listed one is given up without being walked whole."""

    keys: frozenset[Any]
    depth: int
    nodes: int

    def __new__(cls, values: Iterable[Any]) -> ValueSet:
        self = super().__new__(cls, values)
        keys = {json_key(v, _LISTED_DEPTH) for v in self}
        keys.discard(NO_MATCH)
        self.keys = frozenset(keys)
        self.depth = max(map(_depth, self), default=0)
        self.nodes = max(map(_nodes, self), default=0)
        return self

    def matches(self, value: Any) -> bool:
        return json_key(value, self.depth, self.nodes) in self.keys
