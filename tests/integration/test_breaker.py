"""The circuit breaker's rules against the database: a 5-minute window, 3 refusals or one
firewall answer open it, and it stays open for the cool-down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.outcomes import FailureReason
from bridge.store import tables as t
from bridge.worker.breaker import PanelBreaker

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
REFUSED = FailureReason.INVALID_CREDENTIALS


async def open_until(engine: AsyncEngine, panel: str = "p") -> datetime | None:
    async with engine.connect() as conn:
        found = await conn.execute(select(t.panel_breakers.c.open_until).where(t.panel_breakers.c.panel == panel))
        return found.scalar_one_or_none()


async def test_three_refusals_in_the_window_open_it_for_the_cool_down(engine: AsyncEngine) -> None:
    breaker = PanelBreaker(engine)
    for minute in (0, 1):
        await breaker.record("p", REFUSED, now=T0 + timedelta(minutes=minute))
    assert await open_until(engine) is None
    await breaker.record("p", REFUSED, now=T0 + timedelta(minutes=2))
    assert await open_until(engine) == T0 + timedelta(minutes=12)


async def test_refusals_spread_over_more_than_the_window_do_not_open_it(engine: AsyncEngine) -> None:
    breaker = PanelBreaker(engine)
    await breaker.record("p", REFUSED, now=T0)
    await breaker.record("p", REFUSED, now=T0 + timedelta(minutes=1))
    await breaker.record("p", REFUSED, now=T0 + timedelta(minutes=6))  # the window started again
    assert await open_until(engine) is None


async def test_one_firewall_answer_opens_it(engine: AsyncEngine) -> None:
    await PanelBreaker(engine).record("p", FailureReason.FIREWALL, now=T0)
    assert await open_until(engine) == T0 + timedelta(minutes=10)


async def test_other_failures_and_other_panels_are_not_counted(engine: AsyncEngine) -> None:
    breaker = PanelBreaker(engine)
    for _ in range(5):
        await breaker.record("p", FailureReason.LIMIT_EXCEEDED, now=T0)
    for _ in range(3):
        await breaker.record("q", REFUSED, now=T0)
    assert await open_until(engine, "p") is None
    assert await open_until(engine, "q") is not None
