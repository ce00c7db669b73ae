"""How a step reaches the panel: through the circuit breaker, the mutation gate and
the lease fence, with every call recorded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.outcomes import FailureReason, PermanentFailure, UnknownOutcome
from bridge.metrics import Metrics
from bridge.panel.client import CallResult, PanelCallRecord, PanelClient
from bridge.panel.config import PanelCredentials
from bridge.store.job_change import LeaseLost
from bridge.store.leases import Clearance, clear_to_send, renew
from bridge.store.types import utcnow
from bridge.waiting import wait_for_event
from bridge.worker.breaker import PanelBreaker
from bridge.worker.panel_gate import GateStopped, PanelGate, TurnTooLate

log = logging.getLogger("bridge.worker")


class WorkerStopping(Exception):
    """The worker began to stop while this call waited for its turn: it is not sent."""


class BreakerOpen(Exception):
    """The panel is not to be called until ``until``: nothing the call would have done was done."""

    def __init__(self, until: datetime, *, firewall: bool = False) -> None:
        super().__init__(f"circuit breaker open until {until.isoformat()}")
        self.until = until
        # The call went, and the panel's firewall turned it away (an HTML 403) before the panel saw it.
        self.firewall = firewall


@dataclass
class PanelAccess:
    client: PanelClient
    creds: PanelCredentials
    gate: PanelGate
    breaker: PanelBreaker
    metrics: Metrics
    engine: AsyncEngine
    job_pk: int
    owner: str
    lease_s: float
    # The end of this worker's lease as committed when the attempt started (or later renewed).
    lease_until: datetime
    calls: list[PanelCallRecord] = field(default_factory=list)
    # Whether these credentials have been accepted by the panel during this attempt.
    proven: bool = False
    # When the panel's quiet period after a call of this attempt that got no answer ends.
    quiet_until: datetime | None = None
    # Whether the worker is stopping (its shutdown grace may cut off a call sent now).
    stopping: Callable[[], bool] = lambda: False
    # A turn at the panel's gate not come by then (the loop's clock) is given up (TurnTooLate).
    turn_by: float | None = None
    # Whether a mutating call of this attempt has gone to the panel (before, nothing took effect).
    mutation_sent: bool = False

    @property
    def panel(self) -> str:
        return self.client.server.name

    @property
    def account(self) -> str:
        return self.creds.username

    async def read(self, call: Callable[[PanelClient, PanelCredentials], Awaitable[CallResult]]) -> CallResult:
        """A read. Reads run concurrently once the credentials are proven (in this attempt, or
        accepted by the panel minutes ago, as this process saw); until then a read
        could be a failed login, so it takes the panel's gate for unproven calls and checks the
        breaker inside it: however many jobs with bad credentials arrive at once, they cannot
        outrun the breaker. (A mutating call, in the other gate, may be a failed login at the
        same moment: at most one failure more than the breaker has seen, well below the ban.)"""
        if self.proven or self.breaker.vouched(self.panel, self.creds):
            return await self._record(call)
        async with self._turn(self.gate.unproven(self.panel, turn_by=self.turn_by)) as locked:
            self._check(await clear_to_send(locked or self.engine, panel=self.panel))
            return await self._record(call)

    async def mutate(
        self, name: str, call: Callable[[PanelClient, PanelCredentials], Awaitable[CallResult]]
    ) -> CallResult:
        """One mutating call: this panel's gate held, breaker closed, and the lease covering the
        call (a worker that lost the job sends nothing).

        Usually that takes one statement inside the gate, renewing the lease and reading the
        breaker. It is skipped when the panel accepted these credentials minutes ago (the call
        cannot be a failed login), this process read the breaker seconds ago (and that reading
        still holds the call back), and the lease committed at the start of the attempt outlasts
        the call by ``lease_s``, as a renewal would: no other worker can lease the job before
        then, even if the panel works on after the call timed out. Every other
        worker waits while the gate is held, so the round trip saved is saved for all of them.

        A call the panel never answered keeps the gate closed for its quiet period, for whoever
        holds it next.
        """
        timeout = self.client.server.timeout_for(name)
        quiet_s = self.client.server.quiet_after_unknown_s
        gate = self.gate.mutation(self.panel, quiet_s=quiet_s, turn_by=self.turn_by)
        async with self._turn(gate, waits=self.metrics.panel_turn_wait_seconds.labels(self.panel)) as locked:
            if self.stopping():
                # The turn came after the worker began to stop (behind a slow call, say): a call sent
                # now could be cut off by the shutdown grace, and its outcome left unknown.
                raise WorkerStopping()
            now = utcnow()
            if self._may_go_unchecked(timeout, now):
                if (until := self.breaker.seen_open_until(self.panel, now)) is not None:
                    raise BreakerOpen(until)
            else:
                renewed_until = now + timedelta(seconds=timeout + self.lease_s)
                clearance = await clear_to_send(
                    locked or self.engine,
                    panel=self.panel,
                    job_pk=self.job_pk,
                    owner=self.owner,
                    lease_s=timeout + self.lease_s,
                )
                self._check(clearance)
                self.lease_until = renewed_until
            if timeout > self.client.server.timeout_s:
                # Longer than ordinary calls (certificate issuance), perhaps longer than the quiet
                # period: were this worker lost during it, the next holder waits until its timeout.
                await self.gate.before_long_call(self.panel, timeout, locked)
            self.gate.sending(self.panel)
            self.mutation_sent = True
            result = await self._record(call)
            if timeout > self.client.server.timeout_s and not self._no_answer(result):
                await self.gate.after_long_call(self.panel, locked)
            if isinstance(result.outcome, UnknownOutcome) and self._no_answer(result) and quiet_s > 0:
                log.warning(
                    "no answer from panel %s to %s: it may still be working on it, so no mutating call goes "
                    "to it for its quiet period (quiet_after_unknown_s = %s)",
                    self.panel,
                    name,
                    quiet_s,
                )
                quiet = await self.gate.keep_quiet(self.panel, quiet_s, locked)
                self.quiet_until = utcnow() + timedelta(seconds=quiet)
            return result

    @staticmethod
    def _no_answer(result: CallResult) -> bool:
        """Whether the panel itself never answered: any answer of its own (an error page too) comes
        when it is done, but a proxy in front of it gives up on a slow call that goes on behind it."""
        return result.record.http_status in (None, 502, 503, 504)

    @contextlib.asynccontextmanager
    async def _turn(
        self,
        gate: contextlib.AbstractAsyncContextManager[asyncpg.Connection | None],
        waits: Histogram | None = None,
    ) -> AsyncIterator[asyncpg.Connection | None]:
        """Hold ``gate``, keeping the job's lease while queued for it; ``waits`` observes how long
        each wait took, the turn come or given up (the longest, when the panel is busiest).

        The queue is as long as the calls ahead take (a certificate issuance takes minutes).
        A job whose lease ran out there would be leased again by another delivery, and a new
        attempt counted against its retry budget for every lease lost before its turn. Most
        turns come at once: the renewals start only after a third of a lease in the queue.
        """
        turn_came = asyncio.Event()
        keeping: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            self.lease_s / 3, lambda: keeping.append(asyncio.create_task(self._keep_lease(turn_came)))
        )
        queued_at = time.monotonic()

        def waited() -> None:
            if waits is not None and not turn_came.is_set():
                waits.observe(time.monotonic() - queued_at)

        try:
            async with gate as locked:
                waited()
                turn_came.set()
                timer.cancel()
                yield locked
        except GateStopped:
            waited()
            raise WorkerStopping() from None
        except TurnTooLate:
            waited()
            raise
        finally:
            turn_came.set()
            timer.cancel()
            for task in keeping:
                await task

    async def _keep_lease(self, turn_came: asyncio.Event) -> None:
        """Renew the lease now and every third of a lease until ``turn_came`` (the check in the
        gate then renews it for the call, or finds it lost)."""
        while not turn_came.is_set():
            until = utcnow() + timedelta(seconds=self.lease_s)
            if until > self.lease_until:
                try:
                    if not await renew(self.engine, self.job_pk, self.owner, until):
                        return
                    self.lease_until = max(self.lease_until, until)
                except Exception as exc:
                    # Tried again a third of a lease later (the check in the gate goes to the database anyway).
                    log.warning("could not renew the lease of a job waiting for the panel: %s", exc.__class__.__name__)
            await wait_for_event(turn_came, self.lease_s / 3)

    def _may_go_unchecked(self, timeout: float, now: datetime) -> bool:
        return (
            self.breaker.vouched(self.panel, self.creds)
            and self.breaker.seen_recently(self.panel)
            # As much room after the call as renewing the lease in the database would give.
            and self.lease_until - now > timedelta(seconds=timeout + self.lease_s)
        )

    def _check(self, clearance: Clearance) -> None:
        if not clearance.leased:
            raise LeaseLost()
        self.breaker.saw(self.panel, clearance.breaker_open_until)
        if clearance.breaker_open_until is not None:
            raise BreakerOpen(clearance.breaker_open_until)

    async def _record(self, call: Callable[[PanelClient, PanelCredentials], Awaitable[CallResult]]) -> CallResult:
        started = time.monotonic()
        result = await call(self.client, self.creds)
        self.metrics.panel_call_seconds.labels(self.panel, result.record.call).observe(time.monotonic() - started)
        self.calls.append(result.record)
        if isinstance(result.outcome, PermanentFailure):
            if result.outcome.reason is FailureReason.INVALID_CREDENTIALS:
                self.breaker.refused(self.panel, self.creds)
            open_until = await self.breaker.record(self.panel, result.outcome.reason)
            if result.outcome.reason is FailureReason.FIREWALL and open_until is not None:
                # A ban lifts by itself (someone else's failed logins from this address, say): the
                # job waits for the breaker, as one that never reached the firewall does.
                raise BreakerOpen(open_until, firewall=True)
        elif result.record.http_status == 200:
            self.proven = True
            self.breaker.accepted(self.panel, self.creds)
        return result
