"""Job leases: one worker per job at a time, and jobs of one service in arrival order."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
from sqlalchemy import ColumnElement, case, exists, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain.jobs import UNFINISHED_JOB_STATUSES, JobStatus
from bridge.store import tables as t
from bridge.store.driver import driver_connection
from bridge.store.types import utcnow


class LeaseOutcome(StrEnum):
    LEASED = "leased"
    NOT_DUE = "not_due"  # the job's next run is later
    BUSY = "busy"  # another worker holds it
    BLOCKED = "blocked"  # an earlier job of the same service is unfinished
    IDLE = "idle"  # nothing to do
    GONE = "gone"


@dataclass(frozen=True)
class Lease:
    outcome: LeaseOutcome
    job_pk: int | None = None
    due_at: datetime | None = None
    # The leased job's row, and on PostgreSQL its steps and compensations (saves the worker
    # reading them again): mappings of column to value.
    row: Mapping[str, Any] | None = None
    steps: Sequence[Mapping[str, Any]] | None = None
    compensations: Sequence[Mapping[str, Any]] | None = None


_earlier = t.jobs.alias("earlier")


def no_earlier_unfinished_job() -> ColumnElement[bool]:
    """The job (``jobs``) is the first unfinished one of its service: its turn has come."""
    return ~exists().where(
        _earlier.c.service_id == t.jobs.c.service_id,
        _earlier.c.id < t.jobs.c.id,
        _earlier.c.status.in_(UNFINISHED_JOB_STATUSES),
    )


async def acquire(engine: AsyncEngine, public_id: str, owner: str, lease_s: float) -> Lease:
    """Lease the job ``public_id`` for ``owner`` when it is due, free, and first of its service."""
    now = utcnow()
    if engine.dialect.name == "postgresql":
        leased = await _acquire_on_postgresql(engine, public_id, owner, now, now + timedelta(seconds=lease_s))
        if leased is not None:
            return leased
        async with engine.connect() as conn:
            return await _why_not(conn, public_id, now)
    async with engine.begin() as conn:
        got = (
            await conn.execute(
                update(t.jobs)
                .where(
                    t.jobs.c.public_id == public_id,
                    t.jobs.c.next_run_at.is_not(None),
                    t.jobs.c.next_run_at <= now,
                    or_(t.jobs.c.lease_until.is_(None), t.jobs.c.lease_until < now),
                    no_earlier_unfinished_job(),
                )
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s))
                .returning(*t.jobs.c)
            )
        ).one_or_none()
        if got is not None:
            return Lease(LeaseOutcome.LEASED, got.id, row=dict(got._mapping))
        return await _why_not(conn, public_id, now)


# Every worker runs this once per job it is handed, so on PostgreSQL the lease and the
# read of the job, its steps and its compensations take two statements (two round trips
# on the driver's connection); the lease's conditions are those of the SQLAlchemy form
# above. The read is a statement of its own: a lease that waited for another worker's
# last write to the job must see the steps that write committed, which the snapshot of
# the leasing statement would not.
#
# The earlier jobs that are unfinished, or failed (an admin's retry makes those unfinished
# again), are locked FOR SHARE and their status read as the lock returns it, the last
# committed one: the statement's snapshot alone would let a retry committed meanwhile and
# this lease both pass, each its own check, and two jobs of a service run at once. The
# retry locks the job it reopens and then looks for a later one leased (admin_ops). OFFSET 0
# keeps the status test above the lock: pushed below it, a row the snapshot saw failed
# would be skipped unlocked. (SQLite runs one writer at a time: no such race there.)
_LEASE = """
    UPDATE jobs SET lease_owner = $2, lease_until = $4
    WHERE public_id = $1
      AND next_run_at IS NOT NULL AND next_run_at <= $3
      AND (lease_until IS NULL OR lease_until < $3)
      AND NOT EXISTS (
          SELECT 1 FROM (
              SELECT earlier.status FROM jobs AS earlier
              WHERE earlier.service_id = jobs.service_id AND earlier.id < jobs.id
                AND earlier.status = ANY($6::text[])
              OFFSET 0 FOR SHARE
          ) AS locked
          WHERE locked.status = ANY($5::text[])
      )
    RETURNING *
"""
_REOPENABLE = [*UNFINISHED_JOB_STATUSES, JobStatus.FAILED]  # the earlier jobs the lease locks
_STEPS_AND_COMPENSATIONS = """
    SELECT
        (SELECT json_agg(s ORDER BY s.position) FROM steps AS s WHERE s.job_id = $1) AS step_rows,
        (SELECT json_agg(json_build_object('id', c.id, 'step', c.step, 'action', c.action, 'status', c.status)
                         ORDER BY c.id)
         FROM compensations AS c WHERE c.job_id = $1) AS compensation_rows
"""


async def _acquire_on_postgresql(
    engine: AsyncEngine, public_id: str, owner: str, now: datetime, until: datetime
) -> Lease | None:
    async with driver_connection(engine) as driver:
        job = await driver.fetchrow(_LEASE, public_id, owner, now, until, list(UNFINISHED_JOB_STATUSES), _REOPENABLE)
        if job is None:
            return None
        try:
            read = await driver.fetchrow(_STEPS_AND_COMPENSATIONS, job["id"])
        except BaseException:
            # Not left leased to a worker that never got to read it (it would wait out the lease).
            with contextlib.suppress(Exception):
                await _unlease(engine, job["id"], owner)
            raise
    assert read is not None
    steps = [_timestamps_parsed(s) for s in read["step_rows"] or []]
    return Lease(LeaseOutcome.LEASED, job["id"], row=job, steps=steps, compensations=read["compensation_rows"] or [])


async def _unlease(engine: AsyncEngine, job_pk: int, owner: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(t.jobs)
            .where(t.jobs.c.id == job_pk, t.jobs.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


def _timestamps_parsed(step: dict[str, Any]) -> dict[str, Any]:
    """A step row read as JSON: its timestamps back to aware UTC datetimes."""
    for name in ("next_attempt_at", "first_attempt_at", "updated_at"):
        if step.get(name) is not None:
            step[name] = datetime.fromisoformat(step[name]).astimezone(UTC)
    return step


async def _why_not(conn: AsyncConnection, public_id: str, now: datetime) -> Lease:
    row = (
        await conn.execute(
            select(t.jobs.c.id, t.jobs.c.next_run_at, t.jobs.c.lease_until).where(t.jobs.c.public_id == public_id)
        )
    ).one_or_none()
    if row is None:
        return Lease(LeaseOutcome.GONE)
    if row.next_run_at is None:
        return Lease(LeaseOutcome.IDLE, row.id)
    if row.next_run_at > now:
        return Lease(LeaseOutcome.NOT_DUE, row.id, row.next_run_at)
    if row.lease_until is not None and row.lease_until >= now:
        return Lease(LeaseOutcome.BUSY, row.id)
    return Lease(LeaseOutcome.BLOCKED, row.id)


async def renew(engine: AsyncEngine, job_pk: int, owner: str, until: datetime) -> bool:
    """Extend ``owner``'s lease of job ``job_pk`` to at least ``until``; False when the job is not
    leased to ``owner`` any more. Never shortens it: a renewal for the call may have gone first."""
    jobs = t.jobs.c
    wanted = literal(until, type_=jobs.lease_until.type)
    longer = case((or_(jobs.lease_until.is_(None), jobs.lease_until < wanted), wanted), else_=jobs.lease_until)
    async with engine.begin() as conn:
        renewed = await conn.execute(
            update(t.jobs).where(jobs.id == job_pk, jobs.lease_owner == owner).values(lease_until=longer)
        )
        return bool(renewed.rowcount)


@dataclass(frozen=True)
class Clearance:
    """Whether a call may go to the panel now: this worker still holds the job, and the panel's breaker is closed."""

    leased: bool
    breaker_open_until: datetime | None


async def clear_to_send(
    bind: asyncpg.Connection | AsyncEngine,
    *,
    panel: str,
    job_pk: int | None = None,
    owner: str = "",
    lease_s: float = 0.0,
) -> Clearance:
    """Renew the lease of ``job_pk`` (when given) for ``lease_s`` and read the panel's breaker.

    Called inside the panel's gate right before a call, so it must be quick: on the gate's
    own PostgreSQL connection it is one statement (one round trip, sent on the driver's
    connection, since it runs while every other worker waits for the gate); with an
    engine (the embedded mode) it is one short transaction.
    """
    now = utcnow()
    until = now + timedelta(seconds=lease_s)
    if isinstance(bind, AsyncEngine):
        row = await _clear_in_transaction(bind, panel, job_pk, owner, until)
    elif job_pk is None:
        row = await bind.fetchrow(_BREAKER_ONLY, panel)
    else:
        row = await bind.fetchrow(_RENEW_AND_BREAKER, panel, job_pk, owner, until)
    assert row is not None
    open_until = row["open_until"]
    return Clearance(
        leased=bool(row["leased"]),
        breaker_open_until=open_until if open_until is not None and open_until > now else None,
    )


_BREAKER_ONLY = "SELECT (SELECT open_until FROM panel_breakers WHERE panel = $1) AS open_until, 1 AS leased"
# Owner unchanged means nobody else leased the job, even if the lease ran out meanwhile.
_RENEW_AND_BREAKER = """
    WITH renewed AS (
        UPDATE jobs SET lease_until = $4::timestamptz WHERE id = $2 AND lease_owner = $3 RETURNING id
    )
    SELECT (SELECT open_until FROM panel_breakers WHERE panel = $1) AS open_until,
           (SELECT count(*) FROM renewed) AS leased
"""


async def _clear_in_transaction(
    engine: AsyncEngine, panel: str, job_pk: int | None, owner: str, until: datetime
) -> Any:
    breaker = select(t.panel_breakers.c.open_until).where(t.panel_breakers.c.panel == panel).scalar_subquery()
    async with engine.begin() as conn:
        leased = 1
        if job_pk is not None:
            renew = update(t.jobs).where(t.jobs.c.id == job_pk, t.jobs.c.lease_owner == owner).values(lease_until=until)
            leased = (await conn.execute(renew)).rowcount
        return (await conn.execute(select(breaker.label("open_until"), literal(leased).label("leased")))).one()._mapping
