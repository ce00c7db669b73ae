"""Parsing what admin clients send: list filters from a query string, optional JSON bodies.

Every problem raises :class:`InvalidInput` naming the parameter, which the API
answers with 422 (and the web page shows).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.domain.validation import is_small_whole_number
from bridge.store.admin_errors import InvalidInput
from bridge.store.admin_queries import DEFAULT_LIMIT, MAX_LIMIT

LIST_PARAMETERS = ("status", "service_id", "domain", "q", "from", "to", "limit", "cursor")
_MAX_TEXT = 253


@dataclass(frozen=True)
class JobFilter:
    """The arguments of :func:`bridge.store.admin_queries.list_jobs`, parsed and checked."""

    status: str | None = None
    service_id: str | None = None
    domain: str | None = None
    search: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return dict(vars(self))


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    if len(value) > _MAX_TEXT:
        raise InvalidInput(f"{name}: at most {_MAX_TEXT} characters", field=name)
    return value or None


def _datetime(query: Mapping[str, str], name: str) -> datetime | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    candidates = [value]
    if " " in value:  # an unencoded "+01:00" arrives as " 01:00"
        head, _, tail = value.rpartition(" ")
        candidates.append(f"{head}+{tail}")
    for candidate in candidates:
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
    raise InvalidInput(f"{name}: must be an ISO 8601 date or date-time, e.g. 2025-01-31T12:00:00Z", field=name)


def _limit(query: Mapping[str, str]) -> int:
    value = query.get("limit", "").strip()
    if not value:
        return DEFAULT_LIMIT
    if not is_small_whole_number(value, 6) or int(value) < 1:
        raise InvalidInput(f"limit: must be a whole number from 1 to {MAX_LIMIT}", field="limit")
    return min(int(value), MAX_LIMIT)


def job_filter(query: Mapping[str, str], *, strict: bool = True) -> JobFilter:
    """Parse ``?status=&service_id=&domain=&q=&from=&to=&limit=&cursor=``.

    ``strict`` also refuses unknown parameters (a misspelt filter would otherwise
    silently list everything).
    """
    if strict:
        for name in query:
            if name not in LIST_PARAMETERS:
                raise InvalidInput(f"{name}: unknown parameter; known: {', '.join(LIST_PARAMETERS)}", field=name)
    created_from, created_to = _datetime(query, "from"), _datetime(query, "to")
    if created_from and created_to and created_from >= created_to:
        raise InvalidInput("from: must be before to", field="from")
    return JobFilter(
        status=_text(query, "status"),
        service_id=_text(query, "service_id"),
        domain=_text(query, "domain"),
        search=_text(query, "q"),
        created_from=created_from,
        created_to=created_to,
        limit=_limit(query),
        cursor=_text(query, "cursor"),
    )


class BadJson(Exception):
    """The body is not JSON at all (400, unlike a well-formed but wrong body: 422)."""


def json_object(body: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    """An optional JSON object body with only ``allowed`` fields; empty means ``{}``."""
    if not body.strip():
        return {}
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadJson(f"body: not valid JSON ({exc})") from None
    if not isinstance(decoded, dict):
        raise InvalidInput("body: must be a JSON object", field="body")
    for name in decoded:
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidInput(f"body.{name}: unknown field; known: {known}", field=f"body.{name}")
    return decoded
