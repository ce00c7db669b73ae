"""The ``panel_gates`` rows in the embedded mode (SQLite), where one process runs every worker.

An asyncio lock serialises that process's calls, and dies with it. So the process marks
each panel's gate as held from its first mutating call until it stops cleanly, and
writes there any quiet period it is keeping: the next process learns whether the one
before ended holding a gate (a crash, perhaps in the middle of a call the panel works
through) and what is left of a quiet period. Three writes in a process's life per panel,
one more per call left without an answer: nothing per call.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.store import tables as t
from bridge.store.types import utcnow

_gates = t.panel_gates.c


class LocalGates:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(self, panel: str, holder: str) -> tuple[float, str | None]:
        """Mark ``panel``'s gate held by ``holder``; the seconds left of a quiet period, and the
        holder before if it never let go (else None)."""
        now = utcnow()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(select(_gates.held_by, _gates.quiet_until).where(_gates.panel == panel))
            ).one_or_none()
            if row is None:
                await conn.execute(insert(t.panel_gates).values(panel=panel, held_by=holder, held_since=now))
                return 0.0, None
            await conn.execute(
                update(t.panel_gates).where(_gates.panel == panel).values(held_by=holder, held_since=now)
            )
        quiet_left = (row.quiet_until - now).total_seconds() if row.quiet_until is not None else 0.0
        return max(quiet_left, 0.0), row.held_by

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
                update(t.panel_gates).where(_gates.panel == panel, _gates.held_by == holder).values(held_by=None)
            )
