"""What a billing admin can do to jobs: list, show, retry (one, or every failed job
that matches), cancel, resolve a compensation record, resend a callback. Pure
database logic shared by the admin API, the web page and the ``bridge jobs`` command.

Each change commits in one transaction with what follows from it (the outbox
row that wakes a worker, the callback that reports a cancellation). Callers wake
the relay afterwards (``runtime.wake_relay()``); the relay also polls, so a
process without one (the CLI against the database) only adds a second's delay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain import validation
from bridge.domain.jobs import (
    CANCELLED_BY_ADMIN,
    OPEN_STEP_STATUSES,
    REOPENED_BY_RETRY,
    JobStatus,
    StepKind,
    StepStatus,
    redone_with,
)
from bridge.store import tables as t
from bridge.store.admin_errors import AdminError, Conflict, InvalidInput, NotFound
from bridge.store.admin_queries import encode_cursor, failed_job_ids, job_pk_of, list_jobs
from bridge.store.callback_rows import CallbackPolicy, enqueue_callback, insert_callback
from bridge.store.crypto import SecretBox
from bridge.store.job_records import wake_next_of_service
from bridge.store.job_view import job_document
from bridge.store.types import utcnow

__all__ = [
    "CANCELLED_BY_ADMIN",
    "AdminError",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "cancel_job",
    "get_job",
    "list_jobs",
    "resend_last_callback",
    "resolve_compensation",
    "retry_failed_jobs",
    "retry_job",
]

COMPENSATION_STATUSES = ("done", "not_needed")


async def get_job(engine: AsyncEngine, job_public_id: str) -> dict[str, Any]:
    """The job as the admin API shows it (every detail, secrets masked); NotFound if unknown."""
    async with engine.connect() as conn:
        return await job_document(conn, await job_pk_of(conn, job_public_id), detail=True)


async def _locked_job(conn: AsyncConnection, job_public_id: str) -> Any:
    # FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers.
    row = (
        await conn.execute(select(t.jobs).where(t.jobs.c.public_id == job_public_id).with_for_update())
    ).one_or_none()
    if row is None:
        raise NotFound(f"job {job_public_id} not found")
    return row


def _fresh_password(job: Any, account: Mapping[str, Any] | None, box: SecretBox) -> str | None:
    """The new encrypted account password, after checking the fresh credentials fit the job."""
    if account is None:
        return None
    if not isinstance(account, Mapping):
        raise InvalidInput("account: must be an object with username and password", field="account")
    username, password = account.get("username"), account.get("password")
    if not isinstance(username, str) or not username:
        raise InvalidInput("account.username: required", field="account.username")
    if not isinstance(password, str) or not password:
        raise InvalidInput("account.password: required", field="account.password")
    try:
        validation.account_password(password, field="account.password")
    except validation.InvalidField as exc:
        raise InvalidInput(str(exc), field="account.password") from None
    if username != job.account_username:
        raise InvalidInput(
            f"account.username: the order is for panel account {job.account_username!r}; "
            "only its password can be replaced",
            field="account.username",
        )
    return box.encrypt(password)


async def retry_job(
    engine: AsyncEngine, box: SecretBox, job_public_id: str, account: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Resume a failed job from its first unfinished step; returns the job.

    Failed and cancelled steps become pending again with a fresh attempt budget.
    Their ``in_flight`` flag is kept: a step that may have taken effect is read back
    on the panel before anything is sent again. Succeeded steps are left alone, except
    those an admin undid (their latest compensation record marked ``done``) and the
    steps whose effect went with theirs: those run again, as if never run. Compensation
    records are kept as they are. Optional ``account`` replaces the password of the
    job's panel account (the username is fixed by the order).
    """
    async with engine.begin() as conn:
        job_pk = await _retry(conn, box, job_public_id, account)
        return await job_document(conn, job_pk, detail=True)


async def _retry(conn: AsyncConnection, box: SecretBox, job_public_id: str, account: Mapping[str, Any] | None) -> int:
    """:func:`retry_job` within ``conn``'s transaction; the job's row id."""
    now = utcnow()
    job = await _locked_job(conn, job_public_id)
    if job.status != JobStatus.FAILED:
        raise Conflict(f"job {job_public_id} is {job.status}; only a failed job can be retried")
    encrypted = _fresh_password(job, account, box)
    busy = (
        await conn.execute(
            select(t.jobs.c.public_id).where(
                t.jobs.c.service_id == job.service_id,
                # An earlier job running is no obstacle: the retried job waits for it, as every
                # job waits for its service's earlier unfinished ones. A later one already past
                # that wait would not wait for the retried job in turn.
                t.jobs.c.id > job.id,
                # Leased counts too: between its lease and its first attempt a job is still accepted.
                or_(t.jobs.c.status == JobStatus.RUNNING, t.jobs.c.lease_until > now),
            )
        )
    ).scalar()
    if busy is not None:
        # One action at a time per service.
        raise Conflict(f"job {busy} of service {job.service_id} is running; retry this one after it has finished")
    fresh = {"attempts": 0, "first_attempt_at": None, "next_attempt_at": None, "error": None, "updated_at": now}
    await conn.execute(
        update(t.steps)
        .where(t.steps.c.job_id == job.id, t.steps.c.status.in_(REOPENED_BY_RETRY))
        .values(status=StepStatus.PENDING, **fresh)
    )
    redo = await _steps_to_redo(conn, job.id)
    if redo:
        # Undone on the panel: known to be absent, so nothing to read back first.
        await conn.execute(
            update(t.steps)
            .where(t.steps.c.id.in_(redo))
            .values(status=StepStatus.PENDING, result=None, in_flight=False, **fresh)
        )
    values: dict[str, Any] = {
        "status": JobStatus.ACCEPTED,
        "error": None,
        "finished_at": None,
        "next_run_at": now,
        "enqueued_at": now,
        "lease_owner": None,
        "lease_until": None,
        "cancel_requested": False,
        "updated_at": now,
    }
    if encrypted is not None:
        values["account_password"] = encrypted
    await conn.execute(update(t.jobs).where(t.jobs.c.id == job.id).values(**values))
    await conn.execute(insert(t.outbox).values(job_public_id=job.public_id, delay_s=0.0, created_at=now))
    return int(job.id)


async def retry_failed_jobs(engine: AsyncEngine, box: SecretBox, **filters: Any) -> dict[str, Any]:
    """Retry the failed jobs that match ``filters`` (those of :func:`failed_job_ids`, ``limit``
    included), oldest first, so that a service's earlier job goes first.

    Each is retried as :func:`retry_job` does, in a transaction of its own. One it refuses (a later
    job replaces it, a later job of its service is running, or it is no longer failed) is
    reported under ``skipped`` with the reason, and the rest go on. ``more`` says whether more
    failed jobs matched than were tried, and ``next_cursor`` where the next call goes on
    (``cursor``: past the jobs this one tried, so that jobs skipped, or failed again at once,
    do not hold the rest back).
    """
    jobs, more = await failed_job_ids(engine, **filters)
    retried: list[str] = []
    skipped: list[dict[str, str]] = []
    for _, job_id in jobs:
        try:
            async with engine.begin() as conn:
                await _not_replaced(conn, job_id)
                await _retry(conn, box, job_id, None)
        except Conflict as exc:
            skipped.append({"job_id": job_id, "error": str(exc)})
        else:
            retried.append(job_id)
    next_cursor = encode_cursor(jobs[-1][0]) if more and jobs else None
    return {"retried": retried, "skipped": skipped, "more": more, "next_cursor": next_cursor}


async def _not_replaced(conn: AsyncConnection, job_public_id: str) -> None:
    """Refuse (``Conflict``) a job a later order of its service says it replaces (``replaces``:
    the billing platform sent it again, changed): retried in bulk it would run an order nobody
    wants any more. One at a time, an admin who means it still can."""
    job, later = t.jobs.alias("job"), t.jobs.alias("later")
    replaced_by = (
        await conn.execute(
            select(later.c.public_id)
            .select_from(
                job.join(later, later.c.service_id == job.c.service_id).join(
                    t.events, t.events.c.id == later.c.event_id
                )
            )
            .where(
                job.c.public_id == job_public_id,
                later.c.id > job.c.id,
                t.events.c.payload["data"]["replaces"].as_string() == job.c.webhook_id,
            )
            .limit(1)
        )
    ).scalar()
    if replaced_by is not None:
        raise Conflict(f"job {replaced_by} replaces it (its order was sent again, changed)")


async def _steps_to_redo(conn: AsyncConnection, job_pk: int) -> list[int]:
    """The job's succeeded steps whose latest compensation record an admin marked done (each
    step on its own: a job may have several of one kind), and the succeeded steps whose
    effect went with theirs."""
    comps, steps = t.compensations.c, t.steps.c
    latest = select(func.max(comps.id)).where(comps.job_id == job_pk).group_by(comps.step_id).scalar_subquery()
    undone = (
        await conn.execute(
            select(steps.id, steps.kind)
            .join(t.compensations, comps.step_id == steps.id)
            .where(comps.id.in_(latest), comps.status == "done", steps.status == StepStatus.SUCCEEDED)
        )
    ).all()
    kinds = frozenset(StepKind(row.kind) for row in undone)
    followers = sorted(redone_with(kinds) - kinds)
    gone_with: list[int] = []
    if followers:
        succeeded_followers = select(steps.id).where(
            steps.job_id == job_pk, steps.kind.in_(followers), steps.status == StepStatus.SUCCEEDED
        )
        gone_with = list((await conn.execute(succeeded_followers)).scalars())
    return [row.id for row in undone] + gone_with


async def cancel_job(engine: AsyncEngine, job_public_id: str, *, policy: CallbackPolicy) -> dict[str, Any]:
    """Cancel a job that has not finished; returns the job.

    With no worker holding it, the job is cancelled at once (a ``job.cancelled``
    callback is written and the service's next job woken). While a worker holds it,
    ``cancel_requested`` is set: the step being sent completes and the worker then
    cancels, so the record of what took effect stays true. Compensation records stay
    ``pending`` either way: they tell the admin what to undo.
    """
    now = utcnow()
    async with engine.begin() as conn:
        job = await _locked_job(conn, job_public_id)
        if JobStatus(job.status).finished:
            raise Conflict(f"job {job_public_id} is {job.status}; only an unfinished job can be cancelled")
        leased = job.lease_owner is not None and job.lease_until is not None and job.lease_until >= now
        if leased:
            await conn.execute(
                update(t.jobs).where(t.jobs.c.id == job.id).values(cancel_requested=True, updated_at=now)
            )
        else:
            await conn.execute(
                update(t.steps)
                .where(t.steps.c.job_id == job.id, t.steps.c.status.in_(OPEN_STEP_STATUSES))
                .values(status=StepStatus.CANCELLED, next_attempt_at=None, updated_at=now)
            )
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.id == job.id)
                .values(
                    status=JobStatus.CANCELLED,
                    cancel_requested=True,
                    error=CANCELLED_BY_ADMIN,
                    finished_at=now,
                    next_run_at=None,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                )
            )
            await enqueue_callback(conn, job.id, job.callback_url, "job.cancelled", policy)
            await wake_next_of_service(conn, job.service_id, job.id)
        return await job_document(conn, job.id, detail=True)


async def resolve_compensation(engine: AsyncEngine, compensation_id: int, status: str = "done") -> dict[str, Any]:
    """Mark a compensation record ``done`` (the admin undid it) or ``not_needed``."""
    if status not in COMPENSATION_STATUSES:
        raise InvalidInput(f"status: must be one of {', '.join(COMPENSATION_STATUSES)}", field="status")
    now = utcnow()
    async with engine.begin() as conn:
        changed = await conn.execute(
            update(t.compensations)
            .where(t.compensations.c.id == compensation_id)
            .values(status=status, resolved_at=now)
        )
        if changed.rowcount != 1:
            raise NotFound(f"compensation record {compensation_id} not found")
        row = (
            await conn.execute(
                select(t.compensations, t.jobs.c.public_id)
                .join(t.jobs, t.jobs.c.id == t.compensations.c.job_id)
                .where(t.compensations.c.id == compensation_id)
            )
        ).one()
    return {
        "id": row.id,
        "job_id": row.public_id,
        "step": row.step,
        "action": row.action,
        "status": row.status,
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
    }


async def resend_last_callback(engine: AsyncEngine, job_public_id: str, *, policy: CallbackPolicy) -> dict[str, Any]:
    """Queue the job's most recent callback again, as a new delivery with its own id.

    The copy goes through the same policy as any callback: one whose origin is not
    allowed, or that cannot be signed, is recorded as refused and never sent.
    """
    async with engine.begin() as conn:
        job = await _locked_job(conn, job_public_id)
        if not job.callback_url:
            raise Conflict(f"job {job_public_id} has no callback_url; there is nothing to resend")
        last = (
            await conn.execute(
                select(t.callbacks).where(t.callbacks.c.job_id == job.id).order_by(t.callbacks.c.id.desc()).limit(1)
            )
        ).one_or_none()
        if last is None:
            raise Conflict(f"job {job_public_id} has sent no callback yet")
        # The admin is saying the receiver is back: callbacks still being retried go now (in
        # order, ahead of the copy, which waits behind them), not at their next scheduled try.
        await conn.execute(
            update(t.callbacks)
            .where(t.callbacks.c.job_id == job.id, t.callbacks.c.status == "pending")
            .values(next_attempt_at=utcnow())
        )
        new = await insert_callback(conn, job.id, last.type, last.url, last.body, policy)
    return {
        "id": new.public_id,
        "job_id": job_public_id,
        "type": last.type,
        "url": last.url,
        "status": new.status,
        "copy_of": last.public_id,
        "last_error": new.refusal,
    }
