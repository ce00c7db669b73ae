"""The job engine's writes. Each commits a state change together with what follows
from it (attempt rows, panel-call records, compensation records, callbacks, outbox
wake-ups) as one :class:`JobChange`, so a crash between two of them loses nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain.jobs import (
    OPEN_STEP_STATUSES,
    UNFINISHED_JOB_STATUSES,
    EarlierEffect,
    JobStatus,
    StepKind,
    StepStatus,
)
from bridge.domain.saga import Finish, StepState
from bridge.panel.client import PanelCallRecord
from bridge.store import tables as t
from bridge.store.callback_rows import CallbackPolicy, callback_row
from bridge.store.crypto import SecretBox
from bridge.store.job_change import WAKE_COLUMNS, JobChange, NextNumber, next_of_service
from bridge.store.job_view import callback_body, deferred_kinds
from bridge.store.leases import Lease
from bridge.store.service_effects import made_by_another_job
from bridge.store.types import utcnow

# Attempt outcomes that never reached the panel: held back by an open breaker, closed unsent
# (cancelled, lease lost, the worker stopping, the gate's wait lost), or handed back after waiting
# too long for the panel's turn. They cost the panel nothing, nor certificate quota.
NOT_SENT_OUTCOMES = ("breaker_open", "abandoned", "handed_back")


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
    result: dict[str, Any] | None = None

    def state(self) -> StepState:
        return StepState(self.position, self.kind, self.status, self.next_attempt_at)


@dataclass
class CompensationRecord:
    id: int
    step: str
    action: str
    status: str

    @classmethod
    def of(cls, row: Any) -> CompensationRecord:
        """From a row mapping (a JSON object read with the lease, or a database row's mapping)."""
        return cls(row["id"], row["step"], row["action"], row["status"])


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
    # Whom the job is leased to: every write for it is fenced by this owner.
    owner: str = ""
    callback_url: str | None = None
    domain: str | None = None
    error: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    compensations: list[CompensationRecord] = field(default_factory=list)
    # What this worker's writes added, for waking the relay and the callback sender.
    wrote_outbox: bool = False
    wrote_callbacks: bool = False

    def step_at(self, position: int) -> StepRecord:
        return next(s for s in self.steps if s.position == position)

    def callback_body(self, event_type: str) -> dict[str, Any]:
        """The callback's body for the job as it is now (the same as the admin read of it gives)."""
        return callback_body(
            {
                "job_id": self.public_id,
                "event_id": self.webhook_id,
                "service_id": self.service_id,
                "domain": self.domain,
                "account": self.account_username,
                "status": self.status.value,
                "steps": [
                    {
                        "kind": s.kind.value,
                        "status": s.status.value,
                        "attempts": s.attempts,
                        "result": s.result,
                        "error": s.error,
                    }
                    for s in self.steps
                ],
                "deferred": deferred_kinds(self.status, self.steps),
                "error": self.error,
                "compensations": [vars(c) for c in self.compensations],
            },
            event_type,
        )


class JobRecords:
    """The worker's reads and writes of a job it holds. Every write is fenced by the lease
    (:class:`LeaseLost` when another worker took the job over) and commits in one go."""

    def __init__(self, engine: AsyncEngine, box: SecretBox, callbacks: CallbackPolicy) -> None:
        self._engine = engine
        self._box = box
        self._callbacks = callbacks

    @property
    def callback_policy(self) -> CallbackPolicy:
        """Where callbacks may go and whether they can be signed (admin operations write callbacks too)."""
        return self._callbacks

    async def load(self, lease: Lease) -> JobRecord:
        """The job just leased, with its steps and compensations (read now unless the lease brought them)."""
        job = lease.row
        assert job is not None
        steps = lease.steps if lease.steps is not None else await self._steps(job["id"])
        if lease.compensations is not None:
            compensations = [CompensationRecord.of(c) for c in lease.compensations]
        else:
            compensations = await self._compensations(job["id"])
        return JobRecord(
            pk=job["id"],
            public_id=job["public_id"],
            webhook_id=job["webhook_id"],
            type=job["type"],
            service_id=job["service_id"],
            panel=job["panel"],
            account_username=job["account_username"],
            account_password=self._box.decrypt(job["account_password"]),
            status=JobStatus(job["status"]),
            cancel_requested=job["cancel_requested"],
            owner=job["lease_owner"],
            callback_url=job["callback_url"],
            domain=job["domain"],
            error=job["error"],
            steps=[
                StepRecord(
                    id=s["id"],
                    position=s["position"],
                    kind=StepKind(s["kind"]),
                    status=StepStatus(s["status"]),
                    params=self._box.decrypt_fields(s["params"]),
                    attempts=s["attempts"],
                    in_flight=s["in_flight"],
                    next_attempt_at=s["next_attempt_at"],
                    first_attempt_at=s["first_attempt_at"],
                    error=s["error"],
                    result=s["result"],
                )
                for s in steps
            ],
            compensations=compensations,
        )

    async def _steps(self, job_pk: int) -> list[Any]:
        async with self._engine.connect() as conn:
            steps = await conn.execute(select(t.steps).where(t.steps.c.job_id == job_pk).order_by(t.steps.c.position))
            return [s._mapping for s in steps]

    async def _compensations(self, job_pk: int) -> list[CompensationRecord]:
        comps = t.compensations.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(comps.id, comps.step, comps.action, comps.status)
                .where(comps.job_id == job_pk)
                .order_by(comps.id)
            )
            return [CompensationRecord.of(r._mapping) for r in rows]

    async def _apply(self, change: JobChange, job: JobRecord) -> dict[str, Any]:
        changed = await change.apply(self._engine)
        job.wrote_outbox |= change.writes_outbox or changed.get("woke_next", 0) > 0
        job.wrote_callbacks |= change.writes_callbacks
        if "compensations" in changed:
            job.compensations = [CompensationRecord.of(c) for c in changed["compensations"]]
        return changed

    def _change(self, job: JobRecord, **job_values: Any) -> JobChange:
        """A change of ``job``, fenced by the lease it was loaded under."""
        return JobChange(job.pk, job.owner, job_values)

    def _callback(self, change: JobChange, job: JobRecord, event_type: str) -> None:
        if job.callback_url:
            # Reports the compensation records as the change commits them, not as this worker
            # last read them: an admin may resolve one at any time.
            change.report_compensations()
            row, _ = callback_row(job.pk, event_type, job.callback_url, job.callback_body(event_type), self._callbacks)
            change.insert(t.callbacks, row)

    async def commit(self, change: JobChange, job: JobRecord) -> None:
        """Commit a change made earlier and held back (see :meth:`record_outcome`)."""
        await self._apply(change, job)

    async def start_attempt(
        self, job: JobRecord, step: StepRecord, lease_s: float, *, after: JobChange | None = None
    ) -> int:
        """Commit the intent before anything is sent: if the worker dies now, the next one reconciles.

        ``after``: the previous step's outcome, not yet committed; both go in one statement.
        """
        now = utcnow()
        change = after or self._change(job)
        change.set(lease_until=now + timedelta(seconds=lease_s))
        if job.status is JobStatus.ACCEPTED:
            job.status = JobStatus.RUNNING
            change.set(status=JobStatus.RUNNING, updated_at=now)
            self._callback(change, job, "job.started")
        step.attempts += 1
        step.first_attempt_at = step.first_attempt_at or now
        # A mutating step stays in flight from here until an answer proves what happened.
        step.in_flight = step.in_flight or step.kind.mutating
        step.status = StepStatus.RUNNING
        change.update(
            t.steps,
            {"id": step.id},
            {
                "status": StepStatus.RUNNING,
                "attempts": step.attempts,
                "first_attempt_at": step.first_attempt_at,
                "in_flight": step.in_flight,
                "updated_at": now,
            },
        )
        # Numbered after the step's last attempt row, not by its count of attempts: one held back
        # by an open breaker has a row of its own but does not count against the retry budget.
        number = NextNumber("step_id", step.id)
        change.insert(
            t.attempts,
            {"step_id": step.id, "number": number, "worker": job.owner, "started_at": now},
            id_as="attempt_id",
        )
        return int((await self._apply(change, job))["attempt_id"])

    async def withdraw_attempt(
        self, job: JobRecord, step: StepRecord, attempt_id: int, *, in_flight: bool, message: str
    ) -> None:
        """An attempt started but never sent (the job was cancelled meanwhile): close it, and put back
        whether the step may have taken effect as it was before."""
        now = utcnow()
        change = self._change(job, updated_at=now)
        change.update(t.attempts, {"id": attempt_id}, {"finished_at": now, "outcome": "abandoned", "message": message})
        change.update(t.steps, {"id": step.id}, {"in_flight": in_flight, "updated_at": now})
        step.in_flight = in_flight
        await self._apply(change, job)

    async def made_by_another_job(self, job: JobRecord, step: StepRecord) -> EarlierEffect | None:
        """Which other job of the service made what ``step`` makes, if one did (see service_effects)."""
        return await made_by_another_job(
            self._engine,
            self._box,
            job_pk=job.pk,
            service_id=job.service_id,
            panel=job.panel,
            account=job.account_username,
            kind=step.kind,
            params=step.params,
        )

    def record_outcome(
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
        taken_over_from_step: int | None = None,
    ) -> JobChange:
        """The step's outcome, held back (not committed): the runner commits it together with the
        start of the next step, or on its own (:meth:`commit`). The job in memory shows it already."""
        now = utcnow()
        change = self._change(job, updated_at=now)
        # An admin may have asked to cancel while this step ran: the runner honours it before the next step.
        change.read_back("cancel_requested")
        change.update(t.attempts, {"id": attempt_id}, {"finished_at": now, "outcome": label, "message": message})
        for c in calls:
            change.insert(
                t.panel_calls,
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
                },
            )
        error = None if status is StepStatus.SUCCEEDED else message
        change.update(
            t.steps,
            {"id": step.id},
            {
                "status": status,
                "attempts": step.attempts,
                "first_attempt_at": step.first_attempt_at,
                "in_flight": in_flight,
                "result": result,
                "error": error,
                "next_attempt_at": next_attempt_at,
                "updated_at": now,
            },
        )
        if compensation is not None:
            change.insert(
                t.compensations,
                {
                    "job_id": job.pk,
                    "step_id": step.id,
                    "step": step.kind.value,
                    "action": compensation,
                    "status": "pending",
                    "created_at": now,
                },
                id_as="compensation_id",
            )
            recorded = CompensationRecord(0, step.kind.value, compensation, "pending")
            job.compensations.append(recorded)
            change.on_commit(lambda changed: setattr(recorded, "id", changed["compensation_id"]))
        if taken_over_from_step is not None:
            # The undo moves to this job, which now depends on the thing: the job that made it
            # no longer lists it as something to undo.
            change.update(
                t.compensations,
                {"step_id": taken_over_from_step, "status": "pending"},
                {"status": "not_needed", "resolved_at": now},
            )
        step.status, step.in_flight, step.next_attempt_at = status, in_flight, next_attempt_at
        step.error, step.result = error, result
        change.on_commit(lambda changed: setattr(job, "cancel_requested", bool(changed["cancel_requested"])))
        return change

    async def finish(self, job: JobRecord, action: Finish, *, error: str | None, was: JobStatus) -> None:
        """Final status (or succeeded-with-deferred), lease released, callbacks, next job of the service woken."""
        now = utcnow()
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
        change = self._change(job, **values)
        job.status, job.error = action.status, error
        if action.status is JobStatus.SUCCEEDED and not action.deferred:
            # Those an admin resolved keep the resolution, even one committed as the job finishes.
            change.report_compensations(settle="not_needed")
        if action.status is JobStatus.CANCELLED:
            change.update(
                t.steps,
                {"job_id": job.pk, "status": OPEN_STEP_STATUSES},
                {"status": StepStatus.CANCELLED, "updated_at": now},
            )
            for step in job.steps:
                step.status = StepStatus.CANCELLED if step.status in OPEN_STEP_STATUSES else step.status
        if action.wake_at is not None:
            _wake(change, job.public_id, max(0.0, (action.wake_at - now).total_seconds()))
        if was.finished:
            callback = "job.updated"
        else:
            callback = f"job.{action.status.value}"
            change.wake_next_of_service(job.service_id, now)
        self._callback(change, job, callback)
        await self._apply(change, job)

    async def wait(self, job: JobRecord, until: datetime) -> None:
        """Nothing to run before ``until``: release the lease and schedule a wake-up."""
        now = utcnow()
        change = self._change(
            job, next_run_at=until, lease_owner=None, lease_until=None, enqueued_at=now, updated_at=now
        )
        # An admin's cancel committed since this worker last read the job found it leased, so it
        # only asked: honoured now, not when the wait is over (a retry may be half an hour away).
        change.read_back("cancel_requested")
        _wake(change, job.public_id, max(0.0, (until - now).total_seconds()))
        changed = await self._apply(change, job)
        # A finished job (succeeded, a deferred step still waiting) is past cancelling.
        if changed["cancel_requested"] and not job.status.finished:
            await self._due_now_to_cancel(job)

    async def _due_now_to_cancel(self, job: JobRecord) -> None:
        now = utcnow()
        async with self._engine.begin() as conn:
            waiting = (
                t.jobs.c.id == job.pk,
                t.jobs.c.lease_owner.is_(None),
                t.jobs.c.cancel_requested.is_(True),
                t.jobs.c.status.in_(UNFINISHED_JOB_STATUSES),
            )
            updated = await conn.execute(
                update(t.jobs).where(*waiting).values(next_run_at=now, enqueued_at=now, updated_at=now)
            )
            if updated.rowcount:
                await conn.execute(insert(t.outbox).values(job_public_id=job.public_id, delay_s=0.0, created_at=now))
        job.wrote_outbox = True

    async def release(self, job_pk: int, job_public_id: str, *, owner: str, retry_in_s: float = 0.0) -> None:
        """Give the job back (shutdown, an unexpected error, its time on one wake-up up); it runs
        again after ``retry_in_s``."""
        now = utcnow()
        change = JobChange(
            job_pk,
            owner,
            {
                "next_run_at": now + timedelta(seconds=retry_in_s),
                "lease_owner": None,
                "lease_until": None,
                "enqueued_at": now,
                "updated_at": now,
            },
        )
        _wake(change, job_public_id, retry_in_s)
        await change.apply(self._engine)

    async def attempt_times(self, step_id: int, since: datetime) -> list[datetime]:
        """When the step's attempts since ``since`` started, leaving out those known never sent
        (an attempt with no outcome yet may have reached the panel, and counts)."""
        a = t.attempts.c
        sent = or_(a.outcome.is_(None), a.outcome.not_in(NOT_SENT_OUTCOMES))
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(a.started_at).where(a.step_id == step_id, a.started_at >= since, sent))
            return list(rows.scalars())

    async def abandon_attempt(self, attempt_id: int, message: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t.attempts)
                .where(t.attempts.c.id == attempt_id)
                .values(finished_at=utcnow(), outcome="abandoned", message=message)
            )


def _wake(change: JobChange, job_public_id: str, delay_s: float) -> None:
    change.insert(t.outbox, {"job_public_id": job_public_id, "delay_s": delay_s, "created_at": utcnow()})


async def wake_next_of_service(conn: AsyncConnection, service_id: str, job_pk: int) -> None:
    """Wake the next unfinished job of ``service_id`` after job ``job_pk`` (it was waiting its turn)."""
    await conn.execute(insert(t.outbox).from_select(WAKE_COLUMNS, next_of_service(service_id, job_pk, utcnow())))
