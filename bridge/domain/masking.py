"""Masking secrets by field name, never by value.

Masking by value leaks a secret's length and misses copies of it; masking by name
catches every field that can hold one, wherever it sits in a nested structure.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
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


@functools.lru_cache(maxsize=1024)  # a handful of field names, asked about on every event
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


def scrub(value: Any, secrets: Iterable[str], *, min_length: int = 1) -> Any:
    """A copy of ``value`` with every known secret value replaced inside its strings.

    Names are masked by :func:`mask`; this guards free text, where a secret may be
    quoted back (a MySQL error quoting a statement, an exception naming a URL).
    Longer secrets go first, so one that begins with another is masked whole.
    ``min_length`` skips values so short that masking them would mangle ordinary words.
    """
    ordered = sorted((s for s in secrets if len(s) >= max(min_length, 1)), key=len, reverse=True)
    return _scrub(value, ordered)


def _scrub(value: Any, ordered: list[str]) -> Any:
    if isinstance(value, str):
        for secret in ordered:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, Mapping):
        return {k: _scrub(v, ordered) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, ordered) for v in value]
    return value
