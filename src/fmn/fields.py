"""The `fields` filter's JSON semantics, shared by both engines.

The ``fields`` filter compares JSON values: ``true`` is not ``1`` (Python
would say it is), while ``1`` and ``1.0`` are the same JSON number.  A dotted
path walks objects by key and arrays by a decimal index; anything else means
there is no value there, and the filter fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MISSING: Any = object()


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
