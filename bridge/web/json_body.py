"""Decoding a JSON request body in which every object names each of its fields once.

JSON allows ``{"domain": "a.com", "domain": "b.com"}`` and Python keeps the last value
silently; an order (or an admin's request) that says two things about one field gets
a clear refusal instead, naming where.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateField(ValueError):
    """An object of the body names a field twice; ``where`` is its dotted path (``data.domain``)."""

    def __init__(self, where: str) -> None:
        super().__init__(f"{where}: given twice in one JSON object; each field may appear once")
        self.where = where


class _Seen(Exception):
    pass


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Seen()
    return obj


def loads(body: bytes | str) -> Any:
    """``json.loads``, refusing an object that names a field twice (DuplicateField). Its other
    errors are json.loads's own (ValueError, RecursionError)."""
    try:
        return json.loads(body, object_pairs_hook=_strict_object)
    except _Seen:
        raise DuplicateField(_first_duplicate(json.loads(body, object_pairs_hook=list), "")) from None


def _first_duplicate(value: Any, where: str) -> str:
    """The path of the first field named twice, in ``value`` decoded with objects as pair lists."""
    if isinstance(value, list) and all(isinstance(p, tuple) for p in value):
        seen: set[str] = set()
        for key, item in value:
            path = f"{where}.{key}" if where else key
            if key in seen:
                return path
            seen.add(key)
            found = _first_duplicate(item, path)
            if found:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = _first_duplicate(item, f"{where}.{n}" if where else str(n))
            if found:
                return found
    return ""
