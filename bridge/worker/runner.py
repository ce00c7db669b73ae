"""The job runner: handles one wake-up for one job.

Lease the job, then run its steps one after another, committing each step's
intent before sending and its outcome before going on, until the job finishes or
must wait (a retry later, a deferred step). The message is acknowledged only
after all of that is committed (the queue acks when :meth:`handle` returns).
Nothing sleeps while holding a message: waiting is a committed ``next_run_at``
plus a delayed wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.broker.base import JobQueue
from bridge.domain.jobs import CANCELLED_BY_ADMIN, DEFERRABLE_KINDS, JobStatus, StepKind, StepStatus
from bridge.domain.retry import DEFAULT_POLICIES, RetryPolicy
from bridge.domain.saga import Finish, RunStep, WaitUntil, next_action
from bridge.metrics import Metrics
from bridge.panel.client import PanelClient
from bridge.panel.config import PanelCredentials
from bridge.store import leases
from bridge.store.errors import DATABASE_OUT_OF_REACH
from bridge.store.job_change import JobChange, LeaseLost
from bridge.store.job_records import JobRecord, JobRecords, StepRecord
from bridge.store.types import utcnow
from bridge.worker.breaker import PanelBreaker
from bridge.worker.panel_access import BreakerOpen, PanelAccess, WorkerStopping
from bridge.worker.panel_gate import GateWaitLost, PanelGate, TurnTooLate
from bridge.worker.steps import EXECUTORS, Step, StepOutcome

log = logging.getLogger("bridge.worker")

# What may end an attempt before its call went, and is no fault of the step's (see _run_step): the
# wait for the gate lost, the database out of reach or of connections. Not every database error:
# a statement the database refuses is a fault to see, with its traceback, in handle().
_LOST_BEFORE_SENDING: tuple[type[BaseException], ...] = (GateWaitLost, *DATABASE_OUT_OF_REACH)


@dataclass
class RunnerConfig:
    lease_s: float = 60.0
    delay_scale: float = 1.0
    policies: dict[StepKind, RetryPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    # After an unexpected error the job is given back and tried again this much later (scaled).
    error_backoff_s: float = 30.0
    # A job still running this long after its wake-up (queued behind other calls at a busy panel,
    # say) goes back to the queue instead of waiting on: from the wait for its next turn, or
    # before its next step. Its message is acknowledged, so no message stays unacknowledged
    # longer than this, one call and the wait for a place in the worker: well within RabbitMQ's
    # consumer_timeout (30 minutes), which would close the channel and redeliver every message
    # on it. Not scaled: it is about the broker's clock.
    hand_back_after_s: float = 300.0


class JobRunner:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        records: JobRecords,
        queue: JobQueue,
        clients: Callable[[str], PanelClient],
        gate: PanelGate,
        breaker: PanelBreaker,
        metrics: Metrics,
        owner: str,
        config: RunnerConfig,
        wake_relay: Callable[[], None],
        wake_callbacks: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._records = records
        self._queue = queue
        self._clients = clients
        self._gate = gate
        self._breaker = breaker
        self._metrics = metrics
        self._owner = owner
        self._leases = itertools.count(1)
        self._config = config
        self._wake_relay = wake_relay
        self._wake_callbacks = wake_callbacks
        self.stopping = False

    def stop(self) -> None:
        """Begin to stop: no call goes to a panel from now on, and steps waiting for a panel's
        gate give up their turn at once (their attempts recorded as abandoned, the jobs handed
        back); a call already sent is let finish."""
        self.stopping = True
        self._gate.stop_waiting()

    async def handle(self, job_id: str) -> None:
        # Every lease is taken under an owner of its own, the fence of everything written and sent
        # under it: a lease that ran out and was taken again by another delivery in this same
        # process must fence out the first one as surely as a worker in another process.
        # (Cut to the column's width from the left: the unique end is kept.)
        owner = f"{self._owner}:{next(self._leases):x}"[-64:]
        lease = await leases.acquire(self._engine, job_id, owner, self._config.lease_s)
        if lease.outcome is leases.LeaseOutcome.NOT_DUE and lease.due_at is not None:
            # Early (a delay bucket shorter than the wait): ask again for the rest.
            await self._queue.publish(job_id, max(0.0, (lease.due_at - utcnow()).total_seconds()))
            return
        if lease.outcome is not leases.LeaseOutcome.LEASED:
            return
        job: JobRecord | None = None
        hand_back_at = asyncio.get_running_loop().time() + self._config.hand_back_after_s
        try:
            job = await self._records.load(lease)
            await self._advance(job, hand_back_at)
        except LeaseLost:
            log.warning("lease lost; another worker has the job now", extra={"job_id": job_id})
        except Exception:
            # Includes a job that cannot even be loaded (say, a secret under a retired key).
            log.exception("unexpected error running job %s; it will be tried again", job_id, extra={"job_id": job_id})
            await self._give_back(lease.job_pk, job_id, owner)
            self._wake_relay()
        if job is not None:
            # Woken only when there is something new for them, not after every job.
            if job.wrote_outbox:
                self._wake_relay()
            if job.wrote_callbacks:
                self._wake_callbacks()

    async def _give_back(self, job_pk: int | None, job_id: str, owner: str) -> None:
        assert job_pk is not None
        try:
            await self._records.release(
                job_pk, job_id, owner=owner, retry_in_s=self._config.error_backoff_s * self._config.delay_scale
            )
        except LeaseLost:
            pass

    async def _advance(self, job: JobRecord, hand_back_at: float) -> None:
        was = job.status
        loop = asyncio.get_running_loop()
        # A step's outcome is held back until the next step starts, so that both are one
        # statement; anything else the loop does commits it first.
        held: JobChange | None = None
        try:
            while True:
                action = self._next(job)
                giving_back = self.stopping or loop.time() >= hand_back_at
                if held is not None and (giving_back or not isinstance(action, RunStep)):
                    await self._records.commit(held, job)
                    held = None
                if job.cancel_requested and not job.status.finished:
                    await self._finish(job, Finish(JobStatus.CANCELLED), CANCELLED_BY_ADMIN, was)
                    return
                if isinstance(action, Finish):
                    if job.status.finished and action.status is JobStatus.SUCCEEDED and action.deferred:
                        # Still waiting on the deferred step: nothing changed, only the next wake-up.
                        assert action.wake_at is not None
                        await self._records.wait(job, action.wake_at)
                        return
                    await self._finish(job, action, self._job_error(job, action), was)
                    return
                if isinstance(action, WaitUntil):
                    await self._records.wait(job, action.at)
                    return
                if giving_back:
                    await self._records.release(job.pk, job.public_id, owner=job.owner)
                    job.wrote_outbox = True
                    if not self.stopping:
                        log.info(
                            "job %s went back to the queue after %.0f s, before its step %s",
                            job.public_id,
                            self._config.hand_back_after_s,
                            job.step_at(action.position).kind.value,
                            extra={"job_id": job.public_id},
                        )
                    return
                # Handed over: once merged with the next start it must not be committed again on its own.
                merged, held = held, None
                going_on, held = await self._run_step(job, job.step_at(action.position), merged, hand_back_at)
                if not going_on:
                    return
        except BaseException:
            if held is not None:
                # What the panel answered must not be lost with the error.
                with contextlib.suppress(Exception):
                    await self._records.commit(held, job)
            raise

    def _next(self, job: JobRecord) -> Finish | WaitUntil | RunStep:
        deferrable = DEFERRABLE_KINDS if job.type == "service.create" else frozenset()
        return next_action([s.state() for s in job.steps], utcnow(), deferrable)

    async def _finish(self, job: JobRecord, action: Finish, error: str | None, was: JobStatus) -> None:
        await self._records.finish(job, action, error=error, was=was)
        if not was.finished:
            self._metrics.jobs_finished.labels(action.status.value).inc()
        log.info("job %s %s", job.public_id, action.status.value, extra={"job_id": job.public_id})

    def _job_error(self, job: JobRecord, action: Finish) -> str | None:
        if action.status is JobStatus.FAILED:
            failed = [s for s in job.steps if s.status is StepStatus.FAILED]
            return f"{failed[0].kind}: {failed[0].error}" if failed and failed[0].error else "a step failed"
        return None

    async def _run_step(
        self, job: JobRecord, step: StepRecord, held: JobChange | None, hand_back_at: float
    ) -> tuple[bool, JobChange | None]:
        """Run one attempt of ``step``, its start committed with ``held`` (the previous step's outcome).

        Returns whether to go on with the job, and this attempt's outcome, held back.
        """
        # Whether an earlier attempt may have taken effect; start_attempt marks this one in flight.
        unsure = step.in_flight
        lease_s = self._config.lease_s + self._sending_room_s(job, step)
        # No later than the lease start_attempt commits: what the panel access may count on.
        lease_until = utcnow() + timedelta(seconds=lease_s)
        attempt_id = await self._records.start_attempt(job, step, lease_s, after=held)
        if job.cancel_requested:
            # Learnt as the previous outcome was committed: this attempt is never sent.
            await self._records.withdraw_attempt(
                job, step, attempt_id, in_flight=unsure, message=f"not sent: {CANCELLED_BY_ADMIN}"
            )
            return True, None
        access = PanelAccess(
            client=self._clients(job.panel),
            creds=PanelCredentials(job.account_username, job.account_password),
            gate=self._gate,
            breaker=self._breaker,
            metrics=self._metrics,
            engine=self._engine,
            job_pk=job.pk,
            owner=job.owner,
            lease_s=self._config.lease_s,
            lease_until=lease_until,
            stopping=lambda: self.stopping,
            turn_by=hand_back_at,
        )
        extra = {"job_id": job.public_id, "event_id": job.webhook_id, "step": step.kind.value}
        try:
            made_by = functools.partial(self._records.made_by_another_job, job, step)
            todo = Step(step.kind, step.params, unsure, job.type, made_by_another_job=made_by)
            outcome = await EXECUTORS[step.kind](todo, access)
        except LeaseLost:
            log.warning("lease lost before sending; another worker has the job", extra=extra)
            await self._records.abandon_attempt(attempt_id, "lease lost before sending; nothing was sent")
            return False, None
        except BreakerOpen as exc:
            # Jobs wait for the breaker, they do not fail on it.
            message = f"Not sent: the panel's {exc}."
            if exc.firewall:
                message = f"Turned away by the panel's firewall (HTTP 403 page: this address is banned); the {exc}."
            outcome = StepOutcome("retry", message, "breaker_open", in_flight=unsure)
            not_before = exc.until
        except WorkerStopping:
            outcome = StepOutcome("retry", "Not sent: the worker is stopping.", "abandoned", in_flight=unsure)
            # Due at once: the job is released for another worker as the runner stops.
            not_before = utcnow()
        except _LOST_BEFORE_SENDING as exc:
            if access.mutation_sent:
                raise
            # Lost before anything with an effect went (the wait for the gate, the check in it, the
            # database busy): tried again after a pause, as exactly as unsure as it was.
            log.warning("step %s not sent: %s", step.kind.value, exc.__class__.__name__, extra=extra)
            message = f"Not sent: {exc.__class__.__name__} before the call went; tried again shortly."
            outcome = StepOutcome("retry", message, "abandoned", in_flight=unsure)
            not_before = utcnow() + timedelta(seconds=self._config.error_backoff_s * self._config.delay_scale)
        except TurnTooLate:
            if access.mutation_sent:
                raise  # not so far (no turn is waited for after the call), but never "not sent" then
            message = (
                f"Not sent: no turn at the panel within {self._config.hand_back_after_s:.0f} s of the job's "
                "wake-up (other calls ahead of it); the job went back to the queue."
            )
            outcome = StepOutcome("retry", message, "handed_back", in_flight=unsure)
            # Due at once: the loop gives the job back (its time is up) with a wake-up of its own.
            not_before = utcnow()
        else:
            log.info("step %s: %s", step.kind.value, outcome.label, extra=extra)
            return True, await self._record(job, step, attempt_id, outcome, access)
        # Never sent: the step is exactly as unsure as it was before, and the attempt counts
        # against neither its retry budget nor its total time.
        step.attempts -= 1
        if step.attempts == 0:
            step.first_attempt_at = None
        return True, await self._record(job, step, attempt_id, outcome, access, not_before=not_before)

    def _sending_room_s(self, job: JobRecord, step: StepRecord) -> float:
        """How much longer the lease committed at the start of a mutating step is, so that its call
        can go without renewing it in the database inside the panel's gate (where every worker
        waits): the call's timeout, plus half a lease for the wait for the gate. A worker killed
        before sending leaves the job that much later. Certificate issuance, whose timeout is
        many minutes, renews in the gate instead."""
        if not step.kind.mutating or step.kind is StepKind.ISSUE_SSL:
            return 0.0
        return self._clients(job.panel).server.timeout_s + self._config.lease_s / 2

    async def _record(
        self,
        job: JobRecord,
        step: StepRecord,
        attempt_id: int,
        outcome: StepOutcome,
        access: PanelAccess,
        not_before: datetime | None = None,
    ) -> JobChange:
        self._metrics.step_attempts.labels(step.kind.value, outcome.label).inc()
        message = outcome.message
        next_at: datetime | None = None
        if outcome.verdict == "succeeded":
            status = StepStatus.SUCCEEDED
        elif outcome.verdict == "failed":
            status = StepStatus.FAILED
        elif not_before is not None:
            status, next_at = StepStatus.WAITING_RETRY, not_before
        else:
            next_at = await self._retry_at(step)
            if next_at is None:
                status = StepStatus.FAILED
                message = f"gave up after {step.attempts} attempt(s): {message}"
            else:
                status = StepStatus.WAITING_RETRY
                if access.quiet_until is not None:
                    # The read-back waits for the panel to have finished the call it never answered.
                    next_at = max(next_at, access.quiet_until)
        return self._records.record_outcome(
            job,
            step,
            attempt_id,
            status=status,
            label=outcome.label,
            message=message,
            in_flight=outcome.in_flight and status is not StepStatus.SUCCEEDED,
            result=outcome.result,
            compensation=outcome.compensation,
            next_attempt_at=next_at,
            calls=access.calls,
            taken_over_from_step=outcome.taken_over_from_step if status is StepStatus.SUCCEEDED else None,
        )

    async def _retry_at(self, step: StepRecord) -> datetime | None:
        policy = self._config.policies[step.kind]
        now = utcnow()
        recent: list[datetime] = []
        if policy.daily_cap is not None:
            recent = await self._records.attempt_times(
                step.id, since=now - timedelta(days=1) * self._config.delay_scale
            )
        at = policy.next_attempt_at(
            attempts_made=step.attempts,
            first_attempt_at=step.first_attempt_at or now,
            now=now,
            recent_attempts=recent,
            scale=self._config.delay_scale,
        )
        return at
