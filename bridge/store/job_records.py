"""The job engine's transactions. Each commits a state change together with what
follows from it (attempt rows, panel-call records, compensation records,
callbacks, outbox wake-ups), so a crash between two of them loses nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain.jobs import OPEN_STEP_STATUSES, JobStatus, StepKind, StepStatus
from bridge.domain.saga import Finish, StepState
from bridge.panel.client import PanelCallRecord
from bridge.store import tables as t
from bridge.store.callback_rows import CallbackPolicy, enqueue_callback
from bridge.store.crypto import SecretBox
from bridge.store.types import utcnow


@dataclass
class StepRecord:
    id: int
    position: int
    kind: StepKind
    status: StepStatus
    params: dict[str, Any]
    attempts: int
    in_flight: bool
    next_attempt_at: datetime | None
    first_attempt_at: datetime | None
    error: str | None = None

    def state(self) -> StepState:
        return StepState(self.position, self.kind, self.status, self.next_attempt_at)


@dataclass
class JobRecord:
    pk: int
    public_id: str
    webhook_id: str
    type: str
    service_id: str
    panel: str
    account_username: str
    account_password: str
    status: JobStatus
    cancel_requested: bool
    callback_url: str | None = None
    steps: list[StepRecord] = field(default_factory=list)

    def step_at(self, position: int) -> StepRecord:
        return next(s for s in self.steps if s.position == position)


class JobRecords:
    def __init__(self, engine: AsyncEngine, box: SecretBox, callbacks: CallbackPolicy) -> None:
        self._engine = engine
        self._box = box
        self._callbacks = callbacks

    @property
    def callback_policy(self) -> CallbackPolicy:
        """Where callbacks may go and whether they can be signed (admin operations write callbacks too)."""
        return self._callbacks

    async def load(self, job_pk: int) -> JobRecord:
        async with self._engine.connect() as conn:
            job = (await conn.execute(select(t.jobs).where(t.jobs.c.id == job_pk))).one()
            steps = (
                await conn.execute(select(t.steps).where(t.steps.c.job_id == job_pk).order_by(t.steps.c.position))
            ).all()
        return JobRecord(
            pk=job.id,
            public_id=job.public_id,
            webhook_id=job.webhook_id,
            type=job.type,
            service_id=job.service_id,
            panel=job.panel,
            account_username=job.account_username,
            account_password=self._box.decrypt(job.account_password),
            status=JobStatus(job.status),
            cancel_requested=job.cancel_requested,
            callback_url=job.callback_url,
            steps=[
                StepRecord(
                    id=s.id,
                    position=s.position,
                    kind=StepKind(s.kind),
                    status=StepStatus(s.status),
                    params=self._box.decrypt_fields(s.params),
                    attempts=s.attempts,
                    in_flight=s.in_flight,
                    next_attempt_at=s.next_attempt_at,
                    first_attempt_at=s.first_attempt_at,
                    error=s.error,
                )
                for s in steps
            ],
        )

    async def start_attempt(self, job: JobRecord, step: StepRecord, owner: str, lease_s: float) -> int:
        """Commit the intent before anything is sent: if the worker dies now, the next one reconciles."""
        now = utcnow()
        async with self._engine.begin() as conn:
            job_values: dict[str, Any] = {"lease_until": now + timedelta(seconds=lease_s)}
            starting = job.status is JobStatus.ACCEPTED
            if starting:
                job_values.update(status=JobStatus.RUNNING, updated_at=now)
            await conn.execute(update(t.jobs).where(t.jobs.c.id == job.pk).values(**job_values))
            if starting:
                job.status = JobStatus.RUNNING
                await enqueue_callback(conn, job.pk, job.callback_url, "job.started", self._callbacks)
            step.attempts += 1
            step.first_attempt_at = step.first_attempt_at or now
            # A mutating step stays in flight from here until an answer proves what happened.
            step.in_flight = step.in_flight or step.kind.mutating
            await conn.execute(
                update(t.steps)
                .where(t.steps.c.id == step.id)
                .values(
                    status=StepStatus.RUNNING,
                    attempts=step.attempts,
                    first_attempt_at=step.first_attempt_at,
                    in_flight=step.in_flight,
                    updated_at=now,
                )
            )
            step.status = StepStatus.RUNNING
            attempt_id = (
                await conn.execute(
                    insert(t.attempts)
                    .values(step_id=step.id, number=step.attempts, worker=owner, started_at=now)
                    .returning(t.attempts.c.id)
                )
            ).scalar_one()
        return int(attempt_id)

    async def record_outcome(
        self,
        job: JobRecord,
        step: StepRecord,
        attempt_id: int,
        *,
        status: StepStatus,
        label: str,
        message: str,
        in_flight: bool,
        result: dict[str, Any] | None,
        compensation: str | None,
        next_attempt_at: datetime | None,
        calls: list[PanelCallRecord],
    ) -> None:
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t.attempts)
                .where(t.attempts.c.id == attempt_id)
                .values(finished_at=now, outcome=label, message=message)
            )
            if calls:
                await conn.execute(
                    insert(t.panel_calls),
                    [
                        {
                            "job_id": job.pk,
                            "attempt_id": attempt_id,
                            "panel": job.panel,
                            "call": c.call,
                            "request": c.request,
                            "http_status": c.http_status,
                            "response": c.response,
                            "outcome": c.outcome,
                            "message": c.message,
                            "duration_ms": c.duration_ms,
                            "created_at": now,
                        }
                        for c in calls
                    ],
                )
            await conn.execute(
                update(t.steps)
                .where(t.steps.c.id == step.id)
                .values(
                    status=status,
                    attempts=step.attempts,
                    in_flight=in_flight,
                    result=result,
                    error=None if status is StepStatus.SUCCEEDED else message,
                    next_attempt_at=next_attempt_at,
                    updated_at=now,
                )
            )
            if compensation is not None:
                await conn.execute(
                    insert(t.compensations).values(
                        job_id=job.pk,
                        step_id=step.id,
                        step=step.kind,
                        action=compensation,
                        status="pending",
                        created_at=now,
                    )
                )
            # An admin may have asked to cancel while this step ran: the runner honours it before the next step.
            requested = (
                await conn.execute(
                    update(t.jobs)
                    .where(t.jobs.c.id == job.pk)
                    .values(updated_at=now)
                    .returning(t.jobs.c.cancel_requested)
                )
            ).scalar_one()
        step.status, step.in_flight, step.next_attempt_at = status, in_flight, next_attempt_at
        step.error = None if status is StepStatus.SUCCEEDED else message
        job.cancel_requested = bool(requested)

    async def finish(self, job: JobRecord, action: Finish, *, error: str | None, was: JobStatus) -> None:
        """Final status (or succeeded-with-deferred), lease released, callbacks, next job of the service woken."""
        now = utcnow()
        async with self._engine.begin() as conn:
            values: dict[str, Any] = {
                "status": action.status,
                "next_run_at": action.wake_at,
                "lease_owner": None,
                "lease_until": None,
                "updated_at": now,
                "error": error,
            }
            if not was.finished:
                values["finished_at"] = now
            await conn.execute(update(t.jobs).where(t.jobs.c.id == job.pk).values(**values))
            if action.status is JobStatus.SUCCEEDED and not action.deferred:
                await conn.execute(
                    update(t.compensations)
                    .where(t.compensations.c.job_id == job.pk, t.compensations.c.status == "pending")
                    .values(status="not_needed")
                )
            if action.status is JobStatus.CANCELLED:
                await conn.execute(
                    update(t.steps)
                    .where(t.steps.c.job_id == job.pk, t.steps.c.status.in_(OPEN_STEP_STATUSES))
                    .values(status=StepStatus.CANCELLED, updated_at=now)
                )
            if action.wake_at is not None:
                await _wake(conn, job.public_id, max(0.0, (action.wake_at - now).total_seconds()))
            if was.finished:
                callback = "job.updated"
            else:
                callback = f"job.{action.status.value}"
                await _wake_next_of_service(conn, job)
            await enqueue_callback(conn, job.pk, job.callback_url, callback, self._callbacks)
        job.status = action.status

    async def wait(self, job: JobRecord, until: datetime) -> None:
        """Nothing to run before ``until``: release the lease and schedule a wake-up."""
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.id == job.pk)
                .values(next_run_at=until, lease_owner=None, lease_until=None, enqueued_at=now, updated_at=now)
            )
            await _wake(conn, job.public_id, max(0.0, (until - now).total_seconds()))

    async def release(self, job_pk: int, job_public_id: str, *, retry_in_s: float = 0.0) -> None:
        """Give the job back (shutdown, unexpected error); it runs again after ``retry_in_s``."""
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.id == job_pk)
                .values(
                    next_run_at=now + timedelta(seconds=retry_in_s),
                    lease_owner=None,
                    lease_until=None,
                    enqueued_at=now,
                    updated_at=now,
                )
            )
            await _wake(conn, job_public_id, retry_in_s)

    async def attempt_times(self, step_id: int, since: datetime) -> list[datetime]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(t.attempts.c.started_at).where(t.attempts.c.step_id == step_id, t.attempts.c.started_at >= since)
            )
            return list(rows.scalars())

    async def abandon_attempt(self, attempt_id: int, message: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t.attempts)
                .where(t.attempts.c.id == attempt_id)
                .values(finished_at=utcnow(), outcome="abandoned", message=message)
            )


async def _wake(conn: AsyncConnection, job_public_id: str, delay_s: float) -> None:
    await conn.execute(insert(t.outbox).values(job_public_id=job_public_id, delay_s=delay_s, created_at=utcnow()))


async def _wake_next_of_service(conn: AsyncConnection, job: JobRecord) -> None:
    await wake_next_of_service(conn, job.service_id, job.pk)


async def wake_next_of_service(conn: AsyncConnection, service_id: str, job_pk: int) -> None:
    """Wake the next unfinished job of ``service_id`` after job ``job_pk`` (it was waiting its turn)."""
    following = (
        await conn.execute(
            select(t.jobs.c.public_id)
            .where(
                t.jobs.c.service_id == service_id,
                t.jobs.c.id > job_pk,
                t.jobs.c.status.in_([JobStatus.ACCEPTED, JobStatus.RUNNING]),
            )
            .order_by(t.jobs.c.id)
            .limit(1)
        )
    ).scalar_one_or_none()
    if following is not None:
        await _wake(conn, following, 0.0)
