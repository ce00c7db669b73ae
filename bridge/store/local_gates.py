"""The ``panel_gates`` rows in the embedded mode (SQLite), where one process runs every worker.

An asyncio lock serialises that process's calls, and dies with it. So the process marks
each panel's gate as held from its first mutating call until it stops cleanly, and
writes there any quiet period it is keeping: the next process learns whether the one
before ended holding a gate (a crash, perhaps in the middle of a call the panel works
through, and if so whether that was a certificate issuance, which the panel may work on
until its timeout) and what is left of a quiet period. Three writes in a process's life per
panel, one more per call left without an answer and two per certificate issuance: nothing
per ordinary call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.store import tables as t
from bridge.store.types import utcnow

_gates = t.panel_gates.c


class LocalGates:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(self, panel: str, holder: str) -> Claimed:
        """Mark ``panel``'s gate held by ``holder``; what the process before left there."""
        now = utcnow()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(_gates.held_by, _gates.quiet_until, _gates.busy_until).where(_gates.panel == panel)
                )
            ).one_or_none()
            if row is None:
                await conn.execute(insert(t.panel_gates).values(panel=panel, held_by=holder, held_since=now))
                return Claimed(0.0, None, 0.0)
            await conn.execute(
                update(t.panel_gates)
                .where(_gates.panel == panel)
                .values(held_by=holder, held_since=now, busy_until=None)
            )
        return Claimed(_left(row.quiet_until, now), row.held_by, _left(row.busy_until, now))

    async def busy_for(self, panel: str, seconds: float) -> None:
        """The holder's call may run ``seconds`` from now (a certificate issuance)."""
        await self._set(panel, busy_until=utcnow() + timedelta(seconds=seconds))

    async def not_busy(self, panel: str) -> None:
        await self._set(panel, busy_until=None)

    async def _set(self, panel: str, **values: object) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(t.panel_gates).where(_gates.panel == panel).values(**values))

    async def keep_quiet(self, panel: str, seconds: float) -> None:
        until = utcnow() + timedelta(seconds=seconds)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t.panel_gates)
                .where(_gates.panel == panel, or_(_gates.quiet_until.is_(None), _gates.quiet_until < until))
                .values(quiet_until=until)
            )

    async def let_go(self, panel: str, holder: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t.panel_gates)
                .where(_gates.panel == panel, _gates.held_by == holder)
                .values(held_by=None, busy_until=None)
            )


@dataclass(frozen=True)
class Claimed:
    """What a gate's row said as a process claimed it."""

    quiet_s: float  # left of a quiet period
    lost_holder: str | None  # the holder before, if it never let go
    busy_s: float  # left of the lost holder's certificate issuance


def _left(until: datetime | None, now: datetime) -> float:
    return max((until - now).total_seconds(), 0.0) if until is not None else 0.0
