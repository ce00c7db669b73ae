"""The worker's writes are fenced by its lease: once another worker has taken the job
over, nothing the first one writes lands. On SQLite and on PostgreSQL (where each
write is one statement)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import asyncpg
import pytest
from conftest import FERNET_KEY
from orders import service_create
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain.events import OrderEvent
from bridge.domain.jobs import JobStatus, StepKind, StepStatus
from bridge.domain.saga import Finish
from bridge.panel.client import PanelCallRecord
from bridge.store import admin_ops, leases
from bridge.store import tables as t
from bridge.store.callback_rows import CallbackPolicy
from bridge.store.crypto import SecretBox
from bridge.store.database import create_engine
from bridge.store.intake import store_event
from bridge.store.job_change import JobChange, LeaseLost
from bridge.store.job_records import JobRecord, JobRecords, StepRecord
from bridge.store.job_view import callback_body, job_document
from bridge.store.types import utcnow

CALLBACK_URL = "https://billing.example.com/bridge-callback"
POLICY = CallbackPolicy(allowed_origins=["https://billing.example.com"], secret_configured=True)
WRITTEN_BY_STEPS = (t.attempts, t.panel_calls, t.compensations, t.callbacks, t.outbox)


async def leased_job(engine: AsyncEngine, records: JobRecords, owner: str) -> JobRecord:
    event = OrderEvent.model_validate(service_create(callback_url=CALLBACK_URL))
    stored = await store_event(engine, SecretBox([FERNET_KEY]), "msg_fence", event)
    lease = await leases.acquire(engine, stored.job_id, owner, 60)
    assert lease.outcome is leases.LeaseOutcome.LEASED
    return await records.load(lease)


async def take_over(engine: AsyncEngine, job: JobRecord, new_owner: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(t.jobs).where(t.jobs.c.id == job.pk).values(lease_owner=new_owner))


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table.name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for table in WRITTEN_BY_STEPS
        }


async def job_and_steps(engine: AsyncEngine, job: JobRecord) -> tuple[Any, list[Any]]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.jobs).where(t.jobs.c.id == job.pk))).one()
        steps = (await conn.execute(select(t.steps).where(t.steps.c.job_id == job.pk).order_by(t.steps.c.id))).all()
    return row, steps


def call() -> PanelCallRecord:
    return PanelCallRecord(
        call="add_domain",
        url="https://panel.example.com:2083/api/add_domain/",
        request={"domain": "example.com"},
        http_status=200,
        response='{"success": true}',
        outcome="succeeded",
        message="ok",
        duration_ms=3.0,
    )


def outcome_of(records: JobRecords, job: JobRecord, step: StepRecord, attempt_id: int, **changes: Any) -> JobChange:
    """The held outcome of an attempt: by default the domain added, with its undo."""
    values: dict[str, Any] = {
        "status": StepStatus.SUCCEEDED,
        "label": "succeeded",
        "message": "Domain added",
        "in_flight": False,
        "result": {"domain_id": 7},
        "compensation": "remove domain example.com (panel id 7) from account john",
        "next_attempt_at": None,
        "calls": [call()],
    }
    return records.record_outcome(job, step, attempt_id, **{**values, **changes})


def retried(records: JobRecords, job: JobRecord, step: StepRecord, attempt_id: int, **changes: Any) -> JobChange:
    """The held outcome of an attempt to be tried again at once, the step left in flight."""
    values: dict[str, Any] = {
        "status": StepStatus.WAITING_RETRY,
        "in_flight": True,
        "result": None,
        "next_attempt_at": utcnow(),
    }
    return outcome_of(records, job, step, attempt_id, **{**values, **changes})


async def test_the_holder_writes_the_step_its_call_and_its_compensation_together(engine: AsyncEngine) -> None:
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    step = job.steps[1]
    attempt_id = await records.start_attempt(job, step, 60)
    outcome = outcome_of(records, job, step, attempt_id, calls=[call(), call()])
    await records.commit(outcome, job)
    row, steps = await job_and_steps(engine, job)
    assert row.status == JobStatus.RUNNING and steps[1].status == StepStatus.SUCCEEDED
    assert steps[1].result == {"domain_id": 7} and steps[1].attempts == 1
    async with engine.connect() as conn:
        comp_ids = (await conn.execute(select(t.compensations.c.id))).scalars().all()
        call_attempts = (await conn.execute(select(t.panel_calls.c.attempt_id))).scalars().all()
        started = (await conn.execute(select(t.callbacks.c.body).where(t.callbacks.c.type == "job.started"))).scalar()
    assert [c.id for c in job.compensations] == comp_ids and len(comp_ids) == 1
    assert call_attempts == [attempt_id, attempt_id]
    assert started["data"]["status"] == "running"


async def test_a_worker_that_lost_its_lease_writes_nothing(engine: AsyncEngine) -> None:
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    step = job.steps[1]
    attempt_id = await records.start_attempt(job, step, 60)
    await take_over(engine, job, "worker-b")
    before, (row_before, steps_before) = await counts(engine), await job_and_steps(engine, job)

    with pytest.raises(LeaseLost):
        await records.start_attempt(job, job.steps[2], 60)
    with pytest.raises(LeaseLost):
        held = outcome_of(records, job, step, attempt_id)
        await records.commit(held, job)
    with pytest.raises(LeaseLost):
        await records.finish(job, Finish(JobStatus.FAILED), error="x", was=JobStatus.RUNNING)
    with pytest.raises(LeaseLost):
        await records.wait(job, utcnow())
    with pytest.raises(LeaseLost):
        await records.release(job.pk, job.public_id, owner="worker-a")

    assert await counts(engine) == before
    row_after, steps_after = await job_and_steps(engine, job)
    assert row_after == row_before and steps_after == steps_before
    assert row_after.lease_owner == "worker-b"


async def test_the_job_read_with_its_lease_is_the_job_read_row_by_row(pg_url: str) -> None:
    # Only PostgreSQL reads the steps with the lease; SQLite always reads them row by row.
    engine = create_engine(pg_url)
    try:
        await _lease_read_matches_row_by_row(engine)
    finally:
        await engine.dispose()


async def _lease_read_matches_row_by_row(engine: AsyncEngine) -> None:
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    step = job.steps[1]
    attempt_id = await records.start_attempt(job, step, 60)
    outcome = retried(records, job, step, attempt_id, label="retryable", message="try again")
    await records.commit(outcome, job)
    await records.wait(job, utcnow())

    lease = await leases.acquire(engine, job.public_id, "worker-b", 60)
    assert lease.outcome is leases.LeaseOutcome.LEASED
    as_leased = await records.load(lease)
    row_by_row = await records.load(leases.Lease(lease.outcome, lease.job_pk, row=lease.row))
    assert as_leased == row_by_row
    assert as_leased.steps[1].next_attempt_at is not None and as_leased.steps[1].in_flight
    assert as_leased.steps[1].first_attempt_at == step.first_attempt_at
    assert len(as_leased.compensations) == 1


async def test_a_lease_that_waited_for_the_last_write_of_another_worker_reads_what_it_wrote(pg_url: str) -> None:
    first, second = create_engine(pg_url), create_engine(pg_url)
    try:
        records = JobRecords(first, SecretBox([FERNET_KEY]), POLICY)
        event = OrderEvent.model_validate(service_create(callback_url=CALLBACK_URL))
        stored = await store_event(first, SecretBox([FERNET_KEY]), "msg_wait", event)
        lease = await leases.acquire(first, stored.job_id, "worker-a", 0)  # runs out at once
        job = await records.load(lease)
        # Worker A's last write, still in flight while B asks for the lease and waits on the job's row.
        async with first.begin() as conn:
            await conn.execute(update(t.jobs).where(t.jobs.c.id == job.pk).values(updated_at=utcnow()))
            await conn.execute(update(t.steps).where(t.steps.c.id == job.steps[0].id).values(status="succeeded"))
            taking_over = asyncio.create_task(leases.acquire(second, stored.job_id, "worker-b", 60))
            await asyncio.sleep(0.3)
            assert not taking_over.done()
        lease = await taking_over
        assert lease.outcome is leases.LeaseOutcome.LEASED
        assert (await JobRecords(second, SecretBox([FERNET_KEY]), POLICY).load(lease)).steps[0].status == "succeeded"
    finally:
        await first.dispose()
        await second.dispose()


async def test_an_outcome_and_the_next_attempt_of_the_same_step_commit_as_if_in_turn(engine: AsyncEngine) -> None:
    # A retry due at once: the step's outcome and its next start go in one change.
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    step = job.steps[1]
    first = await records.start_attempt(job, step, 60)
    held = retried(records, job, step, first, label="unknown", message="no answer in time", compensation=None)
    second = await records.start_attempt(job, step, 60, after=held)
    _, steps = await job_and_steps(engine, job)
    assert (steps[1].status, steps[1].attempts, steps[1].in_flight) == (StepStatus.RUNNING, 2, True)
    assert steps[1].error == "no answer in time"  # the outcome's, kept under the start's
    async with engine.connect() as conn:
        attempts = (await conn.execute(select(t.attempts).order_by(t.attempts.c.id))).all()
    assert [(a.id, a.outcome) for a in attempts] == [(first, "unknown"), (second, None)]


async def test_attempts_after_an_admin_retry_are_numbered_after_the_earlier_ones(engine: AsyncEngine) -> None:
    # The retry gives the step a fresh budget (its attempts start again from 0), not fresh numbers.
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    first = await records.start_attempt(job, job.steps[1], 60)
    failed = outcome_of(
        records, job, job.steps[1], first, status=StepStatus.FAILED, label="permanent", compensation=None
    )
    await records.commit(failed, job)
    await records.finish(job, Finish(JobStatus.FAILED), error="x", was=JobStatus.RUNNING)
    await admin_ops.retry_job(engine, SecretBox([FERNET_KEY]), job.public_id)
    again = await records.load(await leases.acquire(engine, job.public_id, "worker-b", 60))
    await records.start_attempt(again, again.steps[1], 60)
    _, steps = await job_and_steps(engine, job)
    async with engine.connect() as conn:
        numbers = (await conn.execute(select(t.attempts.c.number).order_by(t.attempts.c.id))).scalars().all()
    assert numbers == [1, 2] and steps[1].attempts == 1


async def test_a_callback_reports_compensations_an_admin_resolved_while_the_job_ran(engine: AsyncEngine) -> None:
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    step = job.steps[1]
    attempt_id = await records.start_attempt(job, step, 60)
    held = outcome_of(records, job, step, attempt_id)
    await records.commit(held, job)
    await admin_ops.resolve_compensation(engine, job.compensations[0].id, "done")
    await records.finish(job, Finish(JobStatus.FAILED), error="x", was=JobStatus.RUNNING)
    async with engine.connect() as conn:
        sent = (await conn.execute(select(t.callbacks.c.body).where(t.callbacks.c.type == "job.failed"))).scalar_one()
        read = callback_body(await job_document(conn, job.pk), "job.failed")
    assert sent["data"]["compensations"][0]["status"] == "done"
    assert sent == read


async def job_with_compensation(records: JobRecords, engine: AsyncEngine) -> JobRecord:
    """A job leased to worker-a whose domain step took effect: one compensation record, pending."""
    job = await leased_job(engine, records, "worker-a")
    attempt_id = await records.start_attempt(job, job.steps[1], 60)
    await records.commit(outcome_of(records, job, job.steps[1], attempt_id), job)
    return job


async def finished_and_reported(engine: AsyncEngine, job: JobRecord, finished: JobStatus) -> tuple[Any, Any, Any]:
    """The finish's callback body, the same body from the job as the admin reads it, and the record's row."""
    async with engine.connect() as conn:
        callbacks = select(t.callbacks.c.body).where(t.callbacks.c.type == f"job.{finished.value}")
        sent = (await conn.execute(callbacks)).scalar_one()
        read = callback_body(await job_document(conn, job.pk), f"job.{finished.value}")
        record = (await conn.execute(select(t.compensations))).one()
    return sent, read, record


@pytest.mark.parametrize("finished", [JobStatus.FAILED, JobStatus.SUCCEEDED])
async def test_a_compensation_resolved_while_the_job_finishes_is_reported_as_resolved(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, finished: JobStatus
) -> None:
    # The admin's resolution commits after the finish has begun, right before its change: the
    # record is neither settled as not needed (succeeded) nor reported pending (failed) by it.
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await job_with_compensation(records, engine)
    apply = JobChange.apply

    async def resolved_first(change: JobChange, bind: AsyncEngine) -> dict[str, Any]:
        await admin_ops.resolve_compensation(engine, job.compensations[0].id, "done")
        return await apply(change, bind)

    monkeypatch.setattr(JobChange, "apply", resolved_first)
    await records.finish(job, Finish(finished), error=None, was=JobStatus.RUNNING)
    monkeypatch.undo()

    sent, read, record = await finished_and_reported(engine, job, finished)
    assert record.status == "done" and record.resolved_at is not None
    assert sent["data"]["compensations"][0]["status"] == "done" and sent == read
    assert [c.status for c in job.compensations] == ["done"]


async def waiting_on_a_lock_or_done(engine: AsyncEngine, task: asyncio.Task[Any]) -> None:
    """Until ``task`` waits for a row another transaction holds (or finished without waiting)."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(10):
        while not task.done():
            async with engine.connect() as conn:
                if (await conn.execute(waiting)).scalar_one():
                    return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("finished", [JobStatus.FAILED, JobStatus.SUCCEEDED])
async def test_a_finish_waits_for_a_resolution_being_committed(pg_url: str, finished: JobStatus) -> None:
    # On PostgreSQL the finish is one statement: it must wait for an admin's resolution written
    # but not yet committed, not read the record from before it and commit past it.
    engine = create_engine(pg_url)
    try:
        records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
        job = await job_with_compensation(records, engine)
        written, commit = asyncio.Event(), asyncio.Event()

        class CommitHeldBack:
            """The admin's database: its transaction commits only once told to."""

            @contextlib.asynccontextmanager
            async def begin(self) -> AsyncIterator[AsyncConnection]:
                async with engine.begin() as conn:
                    yield conn
                    written.set()
                    await commit.wait()

        admin = cast(AsyncEngine, CommitHeldBack())
        resolving = asyncio.create_task(admin_ops.resolve_compensation(admin, job.compensations[0].id, "done"))
        await written.wait()
        finishing = asyncio.create_task(records.finish(job, Finish(finished), error=None, was=JobStatus.RUNNING))
        await waiting_on_a_lock_or_done(engine, finishing)
        commit.set()
        await resolving
        await finishing

        sent, read, record = await finished_and_reported(engine, job, finished)
        assert record.status == "done"
        assert sent["data"]["compensations"][0]["status"] == "done" and sent == read
    finally:
        await engine.dispose()


async def test_a_lease_whose_read_failed_is_given_up(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(pg_url)
    try:
        event = OrderEvent.model_validate(service_create(callback_url=CALLBACK_URL))
        stored = await store_event(engine, SecretBox([FERNET_KEY]), "msg_read", event)
        # The read after the lease fails (here: a statement the server refuses).
        monkeypatch.setattr(leases, "_STEPS_AND_COMPENSATIONS", "SELECT no_such_column FROM steps")
        with pytest.raises(asyncpg.PostgresError):
            await leases.acquire(engine, stored.job_id, "worker-a", 60)
        async with engine.connect() as conn:
            row = (await conn.execute(select(t.jobs).where(t.jobs.c.public_id == stored.job_id))).one()
        assert (row.lease_owner, row.lease_until) == (None, None)  # another worker may take it at once
    finally:
        await engine.dispose()


async def test_a_lease_renewed_while_waiting_is_only_ever_lengthened(engine: AsyncEngine) -> None:
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    leased_until = (await job_and_steps(engine, job))[0].lease_until
    # A renewal that lands after a longer one (for the call itself) leaves the longer one.
    assert await leases.renew(engine, job.pk, "worker-a", utcnow() + timedelta(seconds=1))
    assert (await job_and_steps(engine, job))[0].lease_until == leased_until
    later = utcnow() + timedelta(seconds=600)
    assert await leases.renew(engine, job.pk, "worker-a", later)
    assert (await job_and_steps(engine, job))[0].lease_until == later
    await take_over(engine, job, "worker-b")
    assert not await leases.renew(engine, job.pk, "worker-a", later + timedelta(seconds=60))
    assert (await job_and_steps(engine, job))[0].lease_until == later


async def test_attempts_never_sent_do_not_count_towards_a_daily_cap(engine: AsyncEngine) -> None:
    # Every certificate attempt that reached the panel costs quota; one held back by an open
    # breaker, or closed unsent, costs nothing and must not push the next retry out by a day.
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-a")
    ssl = next(s for s in job.steps if s.kind is StepKind.ISSUE_SSL)
    now = utcnow()
    outcomes = [None, "unknown", "retryable", "breaker_open", "abandoned"]
    async with engine.begin() as conn:
        for number, outcome in enumerate(outcomes, start=1):
            await conn.execute(
                insert(t.attempts).values(step_id=ssl.id, number=number, started_at=now, outcome=outcome)
            )
    assert len(await records.attempt_times(ssl.id, since=now - timedelta(hours=1))) == 3


async def test_a_cancel_asked_for_while_the_wait_is_written_makes_the_job_due_at_once(engine: AsyncEngine) -> None:
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-1")
    # The admin's cancel found the job leased, so it only asked; the worker had read the job before.
    async with engine.begin() as conn:
        await conn.execute(update(t.jobs).where(t.jobs.c.id == job.pk).values(cancel_requested=True))

    await records.wait(job, utcnow() + timedelta(hours=1))  # the next retry, an hour away

    row, _ = await job_and_steps(engine, job)
    assert row.lease_owner is None and row.next_run_at <= utcnow()
    lease = await leases.acquire(engine, job.public_id, "worker-2", 60)
    assert lease.outcome is leases.LeaseOutcome.LEASED  # at once, not in an hour
    assert (await records.load(lease)).cancel_requested


async def test_a_wait_without_a_cancel_keeps_the_job_waiting(engine: AsyncEngine) -> None:
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-1")
    await records.wait(job, utcnow() + timedelta(hours=1))
    assert (await leases.acquire(engine, job.public_id, "worker-2", 60)).outcome is leases.LeaseOutcome.NOT_DUE


async def test_a_finished_job_left_with_a_cancel_request_keeps_its_wait(engine: AsyncEngine) -> None:
    # Asked for just before the job finished (succeeded, its certificate deferred): made due at
    # once, it would be leased, waited and made due again, round and round until the wait's end.
    records = JobRecords(engine, SecretBox([FERNET_KEY]), POLICY)
    job = await leased_job(engine, records, "worker-1")
    async with engine.begin() as conn:
        await conn.execute(
            update(t.jobs).where(t.jobs.c.id == job.pk).values(cancel_requested=True, status=JobStatus.SUCCEEDED)
        )
    job.status = JobStatus.SUCCEEDED
    await records.wait(job, utcnow() + timedelta(hours=1))
    assert (await leases.acquire(engine, job.public_id, "worker-2", 60)).outcome is leases.LeaseOutcome.NOT_DUE
