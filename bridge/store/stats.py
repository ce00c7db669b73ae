"""Figures read from the database for the metrics endpoint."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.jobs import JobStatus
from bridge.metrics import Metrics
from bridge.store import tables as t
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.store.types import utcnow


async def refresh_gauges(engine: AsyncEngine, metrics: Metrics) -> None:
    """Set the gauges from the database; leaves them as they were if it cannot be read."""
    try:
        async with engine.connect() as conn:
            by_status: dict[str, int] = dict(
                (await conn.execute(select(t.jobs.c.status, func.count()).group_by(t.jobs.c.status))).all()
            )
            backlog, oldest = (
                await conn.execute(
                    select(func.count(), func.min(t.outbox.c.created_at)).where(t.outbox.c.sent_at.is_(None))
                )
            ).one()
            callbacks_pending = (
                await conn.execute(select(func.count()).where(t.callbacks.c.status == "pending"))
            ).scalar_one()
            breakers = (await conn.execute(select(t.panel_breakers.c.panel, t.panel_breakers.c.open_until))).all()
    except DATABASE_UNAVAILABLE:
        return
    for status in JobStatus:
        metrics.jobs_by_status.labels(status.value).set(by_status.get(status.value, 0))
    metrics.outbox_backlog.set(backlog)
    now = utcnow()
    metrics.outbox_oldest_age.set((now - oldest).total_seconds() if oldest is not None else 0)
    metrics.callback_backlog.set(callbacks_pending)
    for panel, open_until in breakers:
        is_open = open_until is not None and open_until > now
        metrics.breaker_open.labels(panel).set(1 if is_open else 0)
