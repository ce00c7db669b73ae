"""A circuit breaker per panel server, kept in the database so every worker sees it.

The panel's firewall bans the caller's IP after 12 failed logins in 5 minutes
(and for good after 20 bans a day), which would lock the bridge and every other
customer out. So the bridge counts the failed logins it causes per panel in a
5-minute window, and after ``threshold`` of them (or any firewall answer) stops
calling that panel until ``cooldown`` has passed; jobs wait meanwhile, they do
not fail.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.outcomes import FailureReason
from bridge.store import tables as t
from bridge.store.types import utcnow

log = logging.getLogger("bridge.breaker")

TRIPPING_REASONS = frozenset({FailureReason.INVALID_CREDENTIALS, FailureReason.FIREWALL})


class PanelBreaker:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        threshold: int = 3,
        window: timedelta = timedelta(minutes=5),
        cooldown: timedelta = timedelta(minutes=10),
    ) -> None:
        self._engine = engine
        self._threshold = threshold
        self._window = window
        self._cooldown = cooldown

    async def record(self, panel: str, reason: FailureReason, now: datetime | None = None) -> None:
        if reason not in TRIPPING_REASONS:
            return
        now = now or utcnow()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(select(t.panel_breakers).where(t.panel_breakers.c.panel == panel).with_for_update())
            ).one_or_none()
            if row is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            t.panel_breakers.insert().values(panel=panel, failures=0, window_started_at=now)
                        )
                except IntegrityError:
                    pass
                row = (
                    await conn.execute(
                        select(t.panel_breakers).where(t.panel_breakers.c.panel == panel).with_for_update()
                    )
                ).one()
            fresh = row.window_started_at is None or row.window_started_at < now - self._window
            failures = 1 if fresh else row.failures + 1
            values: dict[str, object] = {
                "failures": failures,
                "window_started_at": now if fresh else row.window_started_at,
                "last_reason": reason.value,
            }
            if reason is FailureReason.FIREWALL or failures >= self._threshold:
                values["open_until"] = now + self._cooldown
                log.warning(
                    "circuit breaker open for panel %s until %s (%s, %d failure(s) in the window)",
                    panel,
                    values["open_until"],
                    reason.value,
                    failures,
                )
            await conn.execute(update(t.panel_breakers).where(t.panel_breakers.c.panel == panel).values(**values))
