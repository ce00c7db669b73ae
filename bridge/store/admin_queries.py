"""Reading jobs for admins: the filtered, paginated list, the failed jobs a bulk retry takes,
and one job by its public id."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain.jobs import JobStatus
from bridge.store import tables as t
from bridge.store.admin_errors import InvalidInput, NotFound
from bridge.store.job_view import deferred_kinds, step_document

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
_CURSOR_PREFIX = "j:"
_Query = TypeVar("_Query", bound=Select[Any])


def encode_cursor(job_pk: int) -> str:
    """An opaque cursor: where the next page starts (keyset on the job's integer id)."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{job_pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(raw)
        value = int(raw[len(_CURSOR_PREFIX) :])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor: not a cursor this API gave out", field="cursor") from None
    if value < 1:
        raise InvalidInput("cursor: not a cursor this API gave out", field="cursor")
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_summary(row: Any) -> dict[str, Any]:
    """One line of the job list, without its steps; no secrets."""
    return {
        "job_id": row.public_id,
        "event_id": row.webhook_id,
        "type": row.type,
        "service_id": row.service_id,
        "panel": row.panel,
        "domain": row.domain,
        "account": row.account_username,
        "status": row.status,
        "error": row.error,
        "cancel_requested": row.cancel_requested,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "finished_at": _iso(row.finished_at),
    }


_SUMMARY_COLUMNS = (
    t.jobs.c.id,
    t.jobs.c.public_id,
    t.jobs.c.webhook_id,
    t.jobs.c.type,
    t.jobs.c.service_id,
    t.jobs.c.panel,
    t.jobs.c.domain,
    t.jobs.c.account_username,
    t.jobs.c.status,
    t.jobs.c.error,
    t.jobs.c.cancel_requested,
    t.jobs.c.created_at,
    t.jobs.c.updated_at,
    t.jobs.c.finished_at,
)


def _like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_jobs(
    engine: AsyncEngine,
    *,
    status: str | None = None,
    service_id: str | None = None,
    domain: str | None = None,
    search: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Jobs newest first, and the cursor of the next page (None on the last page).

    ``service_id`` matches exactly; ``domain`` is a case-insensitive substring;
    ``search`` matches either (the web page's one search box); ``created_from`` is
    inclusive and ``created_to`` exclusive. ``limit`` is capped at 200.
    """
    if status is not None and status not in {s.value for s in JobStatus}:
        raise InvalidInput(f"status: must be one of {', '.join(s.value for s in JobStatus)}", field="status")
    limit = _checked_limit(limit)
    query = select(*_SUMMARY_COLUMNS).order_by(t.jobs.c.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(t.jobs.c.status == status)
    query = _matching(query, service_id, domain, search, created_from, created_to)
    if cursor:
        query = query.where(t.jobs.c.id < decode_cursor(cursor))
    async with engine.connect() as conn:
        rows = list((await conn.execute(query)).all())
        page = rows[:limit]
        steps = await _steps_of(conn, [r.id for r in page])
    next_cursor = encode_cursor(page[-1].id) if len(rows) > limit else None
    jobs = []
    for row in page:
        summary = job_summary(row)
        summary["steps"] = [step_document(s, detail=False) for s in steps.get(row.id, [])]
        summary["deferred"] = deferred_kinds(row.status, steps.get(row.id, []))
        jobs.append(summary)
    return jobs, next_cursor


async def failed_job_ids(
    engine: AsyncEngine,
    *,
    service_id: str | None = None,
    domain: str | None = None,
    search: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[tuple[int, str]], bool]:
    """The failed jobs that match (row id and public id), oldest first, past ``cursor`` (where a
    previous call stopped), at most ``limit`` (capped at 200); and whether more match. The filters
    are those of :func:`list_jobs`."""
    limit = _checked_limit(limit)
    query = select(t.jobs.c.id, t.jobs.c.public_id).where(t.jobs.c.status == JobStatus.FAILED)
    query = _matching(query, service_id, domain, search, created_from, created_to)
    if cursor:
        query = query.where(t.jobs.c.id > decode_cursor(cursor))
    async with engine.connect() as conn:
        rows = [(row.id, row.public_id) for row in await conn.execute(query.order_by(t.jobs.c.id).limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def _checked_limit(limit: int) -> int:
    if limit < 1:
        raise InvalidInput("limit: must be at least 1", field="limit")
    return min(limit, MAX_LIMIT)


def _matching(
    query: _Query,
    service_id: str | None,
    domain: str | None,
    search: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
) -> _Query:
    """``query`` narrowed to the jobs the filters of :func:`list_jobs` match."""
    if service_id:
        query = query.where(t.jobs.c.service_id == service_id)
    if domain:
        query = query.where(func.lower(t.jobs.c.domain).like(_like_pattern(domain), escape="\\"))
    if search:
        query = query.where(
            or_(
                t.jobs.c.service_id == search.strip(),
                func.lower(t.jobs.c.domain).like(_like_pattern(search.strip()), escape="\\"),
            )
        )
    if created_from is not None:
        query = query.where(t.jobs.c.created_at >= created_from)
    if created_to is not None:
        query = query.where(t.jobs.c.created_at < created_to)
    return query


async def _steps_of(conn: AsyncConnection, job_pks: list[int]) -> dict[int, list[Any]]:
    """The steps of a page of jobs in one query (a job in the list shows its steps, as CONTRACT.md §5 says)."""
    found: dict[int, list[Any]] = {}
    if job_pks:
        query = select(t.steps).where(t.steps.c.job_id.in_(job_pks)).order_by(t.steps.c.job_id, t.steps.c.position)
        for step in (await conn.execute(query)).all():
            found.setdefault(step.job_id, []).append(step)
    return found


async def job_pk_of(conn: AsyncConnection, job_public_id: str) -> int:
    """The integer id of a job; NotFound when no job has that public id."""
    pk = (await conn.execute(select(t.jobs.c.id).where(t.jobs.c.public_id == job_public_id))).scalar_one_or_none()
    if pk is None:
        raise NotFound(f"job {job_public_id} not found")
    return int(pk)


async def account_of(engine: AsyncEngine, job_id: str) -> str:
    """The job's panel account username; NotFound if there is no such job."""
    async with engine.connect() as conn:
        query = select(t.jobs.c.account_username).where(t.jobs.c.public_id == job_id)
        username = (await conn.execute(query)).scalar_one_or_none()
    if username is None:
        raise NotFound(f"job {job_id} not found")
    return str(username)


async def require_compensation_of(engine: AsyncEngine, compensation_id: int, job_id: str) -> None:
    """NotFound unless the job exists and the compensation record is one of its own."""
    async with engine.connect() as conn:
        job_pk = await job_pk_of(conn, job_id)
        query = select(t.compensations.c.id).where(
            t.compensations.c.id == compensation_id, t.compensations.c.job_id == job_pk
        )
        found = (await conn.execute(query)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"compensation record {compensation_id} is not part of job {job_id}")
