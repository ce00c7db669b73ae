"""Masking secrets by field name, never by value.

Masking by value leaks a secret's length and misses copies of it; masking by name
catches every field that can hold one, wherever it sits in a nested structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASK = "********"

SECRET_FIELD_NAMES: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "dbpass",
        "dbpassc",
        "apikey",
        "api_key",
        "secret",
        "token",
        "authorization",
        "webhook_secret",
        "callback_secret",
        "admin_token",
        "secret_key",
        "cookie",
        "set-cookie",
    }
)


def is_secret_field(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    return (
        lowered in SECRET_FIELD_NAMES
        or lowered.replace("_", "-") in SECRET_FIELD_NAMES
        or lowered.endswith(("_password", "_secret", "_secrets", "_token", "_tokens", "_key"))
    )


def mask(value: Any) -> Any:
    """A copy of ``value`` with every secret-named field's value replaced by MASK."""
    if isinstance(value, Mapping):
        return {k: (MASK if isinstance(k, str) and is_secret_field(k) else mask(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value
