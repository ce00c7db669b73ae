"""Parsing what admin clients send: list filters from a query string, optional JSON bodies.

Every problem raises :class:`InvalidInput` naming the parameter, which the API
answers with 422 (and the web page shows).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.domain.jobs import JobStatus
from bridge.domain.validation import is_small_whole_number, is_unicode_text
from bridge.store.admin_errors import InvalidInput, NotFound
from bridge.store.admin_queries import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor
from bridge.web import json_body

LIST_PARAMETERS = ("status", "service_id", "domain", "q", "from", "to", "limit", "cursor")
# The filters of a retry of every failed job that matches, which must not be given empty.
RETRY_FAILED_FILTERS = ("status", "service_id", "domain", "q", "from", "to")
_MAX_TEXT = 253
_MAX_ROW_ID = 2**63 - 1  # the largest id a BIGINT column holds


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

    def as_match_kwargs(self) -> dict[str, Any]:
        """The arguments of :func:`bridge.store.admin_queries.failed_job_ids` (failed only: no status)."""
        kwargs = self.as_kwargs()
        del kwargs["status"]
        return kwargs


def _has_control(value: str) -> bool:
    # PostgreSQL cannot compare text holding a NUL: it refuses the whole statement.
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    if len(value) > _MAX_TEXT:
        raise InvalidInput(f"{name}: at most {_MAX_TEXT} characters", field=name)
    if _has_control(value):
        raise InvalidInput(f"{name}: must not contain control characters", field=name)
    return value or None


def checked_job_id(value: str) -> str:
    """A job id from a path or a form; NotFound for one no job can have (the database would refuse it)."""
    if _has_control(value):
        raise NotFound(f"job {value!r} not found")
    return value


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
        try:
            # In UTC, as the database compares it: an offset can carry it past year 1 or 9999.
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except OverflowError:
            raise InvalidInput(f"{name}: lies outside the years 1 to 9999 in UTC", field=name) from None
    raise InvalidInput(f"{name}: must be an ISO 8601 date or date-time, e.g. 2025-01-31T12:00:00Z", field=name)


def _limit(query: Mapping[str, str]) -> int:
    value = query.get("limit", "").strip()
    if not value:
        return DEFAULT_LIMIT
    if not is_small_whole_number(value, 6) or int(value) < 1:
        raise InvalidInput(f"limit: must be a whole number from 1 to {MAX_LIMIT}", field="limit")
    return min(int(value), MAX_LIMIT)


def _cursor(query: Mapping[str, str]) -> str | None:
    cursor = _text(query, "cursor")
    if cursor is not None and decode_cursor(cursor) > _MAX_ROW_ID:
        raise InvalidInput("cursor: not a cursor this API gave out", field="cursor")
    return cursor


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
        cursor=_cursor(query),
    )


def failed_job_filter(query: Mapping[str, str]) -> JobFilter:
    """Parse the filters of a retry of every failed job that matches: those of :func:`job_filter`,
    ``status`` only ``failed`` (or left out), and ``cursor`` the ``next_cursor`` of the call before.

    A filter given empty is refused: taken as "any", it would retry every failed job (say, a
    script's ``--service-id "$ID"`` with ``$ID`` unset)."""
    for name in RETRY_FAILED_FILTERS:
        if name in query and not query[name].strip():
            raise InvalidInput(f"{name}: empty; leave it out to match every failed job", field=name)
    filters = job_filter(query)
    if filters.status not in (None, JobStatus.FAILED):
        raise InvalidInput("status: only failed jobs are retried; give failed or leave it out", field="status")
    return filters


class BadJson(Exception):
    """The body is not JSON at all (400, unlike a well-formed but wrong body: 422)."""


def json_object(body: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    """An optional JSON object body with only ``allowed`` fields; empty means ``{}``."""
    if not body.strip():
        return {}
    try:
        decoded = json_body.loads(body)
    except json_body.DuplicateField as exc:
        raise InvalidInput(f"body.{exc}", field=f"body.{exc.where}") from None
    except (ValueError, RecursionError) as exc:
        raise BadJson(f"body: not valid JSON ({exc})") from None
    if not isinstance(decoded, dict):
        raise InvalidInput("body: must be a JSON object", field="body")
    for name in decoded:
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidInput(f"body.{name}: unknown field; known: {known}", field=f"body.{name}")
    where = _lone_surrogate(decoded, "")
    if where is not None:
        raise InvalidInput(f"{where}: not valid Unicode text (a lone surrogate escape)", field=where)
    return decoded


def _lone_surrogate(value: Any, where: str) -> str | None:
    """Where a JSON string holds a lone ``\\ud800``-style escape: no UTF-8 text can carry it,
    so it could be neither encrypted nor stored."""
    if isinstance(value, str):
        return None if is_unicode_text(value) else (where or "body")
    if isinstance(value, dict):
        items: Any = ((str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _lone_surrogate(item, f"{where}.{key}" if where else key)
        if found is not None:
            return found
    return None
