"""How a step reaches the panel: through the circuit breaker, the mutation gate and
the lease fence, with every call recorded."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.outcomes import PermanentFailure
from bridge.metrics import Metrics
from bridge.panel.client import CallResult, PanelCallRecord, PanelClient
from bridge.panel.config import PanelCredentials
from bridge.store.job_change import LeaseLost
from bridge.store.leases import Clearance, clear_to_send
from bridge.worker.breaker import PanelBreaker
from bridge.worker.panel_gate import PanelGate


class BreakerOpen(Exception):
    def __init__(self, until: datetime) -> None:
        super().__init__(f"circuit breaker open until {until.isoformat()}")
        self.until = until


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
    calls: list[PanelCallRecord] = field(default_factory=list)
    # Whether these credentials have been accepted by the panel during this attempt.
    proven: bool = False

    @property
    def panel(self) -> str:
        return self.client.server.name

    @property
    def account(self) -> str:
        return self.creds.username

    async def read(self, call: Callable[[PanelClient, PanelCredentials], Awaitable[CallResult]]) -> CallResult:
        """A read. Reads run concurrently once the credentials are proven; until then a read
        could be a failed login, so it takes the panel's gate for unproven calls and checks the
        breaker inside it: however many jobs with bad credentials arrive at once, they cannot
        outrun the breaker. (A mutating call, in the other gate, may be a failed login at the
        same moment: at most one failure more than the breaker has seen, well below the ban.)"""
        if self.proven:
            return await self._record(call)
        async with self.gate.unproven(self.panel) as locked:
            self._check(await clear_to_send(locked or self.engine, panel=self.panel))
            return await self._record(call)

    async def mutate(
        self, name: str, call: Callable[[PanelClient, PanelCredentials], Awaitable[CallResult]]
    ) -> CallResult:
        """One mutating call: this panel's gate held, breaker closed, and the lease renewed to cover
        the call just before sending (a worker that lost the job sends nothing)."""
        async with self.gate.mutation(self.panel) as locked:
            clearance = await clear_to_send(
                locked or self.engine,
                panel=self.panel,
                job_pk=self.job_pk,
                owner=self.owner,
                lease_s=self.client.server.timeout_for(name) + self.lease_s,
            )
            self._check(clearance)
            return await self._record(call)

    @staticmethod
    def _check(clearance: Clearance) -> None:
        if not clearance.leased:
            raise LeaseLost()
        if clearance.breaker_open_until is not None:
            raise BreakerOpen(clearance.breaker_open_until)

    async def _record(self, call: Callable[[PanelClient, PanelCredentials], Awaitable[CallResult]]) -> CallResult:
        started = time.monotonic()
        result = await call(self.client, self.creds)
        self.metrics.panel_call_seconds.labels(self.panel, result.record.call).observe(time.monotonic() - started)
        self.calls.append(result.record)
        if isinstance(result.outcome, PermanentFailure):
            await self.breaker.record(self.panel, result.outcome.reason)
        elif result.record.http_status == 200:
            self.proven = True
        return result
