"""Group commit of the webhook on PostgreSQL: events that arrive together share a
statement, each still answered only once its own event is stored."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from conftest import FERNET_KEY
from orders import service_create
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.events import OrderEvent
from bridge.store import tables as t
from bridge.store.crypto import SecretBox
from bridge.store.database import create_engine
from bridge.store.intake import EventIntake, IntakeRows

BOX = SecretBox([FERNET_KEY])


@pytest.fixture
async def intake(pg_url: str) -> AsyncIterator[tuple[EventIntake, AsyncEngine]]:
    engine = create_engine(pg_url)
    intake = EventIntake(engine, BOX, pool_size=2)
    await intake.start()
    yield intake, engine
    await intake.close()
    await engine.dispose()


def order(n: int) -> OrderEvent:
    return OrderEvent.model_validate(service_create(service_id=f"svc{n}", domain=f"site{n}.example.com"))


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table.name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for table in (t.events, t.jobs, t.steps, t.outbox)
        }


async def test_many_events_at_once_are_each_stored_once_with_their_job(
    intake: tuple[EventIntake, AsyncEngine],
) -> None:
    store, engine = intake
    # 200 events over two connections: most of them share a statement with others.
    ids = [f"msg_{n}" for n in range(200)] + ["msg_7", "msg_7"]  # and two copies of one of them
    stored = await asyncio.gather(*(store.store(webhook_id, order(int(webhook_id[4:]))) for webhook_id in ids))
    assert [s.duplicate for s in stored].count(False) == 200
    assert len({s.job_id for s in stored}) == 200
    assert {s.job_id for s, w in zip(stored, ids, strict=True) if w == "msg_7"} == {stored[7].job_id}
    assert await counts(engine) == {"events": 200, "jobs": 200, "steps": 1000, "outbox": 200}
    async with engine.connect() as conn:
        by_job = await conn.execute(
            select(t.jobs.c.webhook_id, t.jobs.c.service_id, t.jobs.c.domain).order_by(t.jobs.c.id)
        )
        assert all(row.service_id == f"svc{row.webhook_id[4:]}" for row in by_job)


async def test_an_event_the_database_refuses_does_not_fail_the_others_in_its_batch(
    intake: tuple[EventIntake, AsyncEngine],
) -> None:
    store, engine = intake
    batches = store._batches  # the writer behind store(), fed a row no validation would let through
    assert batches is not None
    good = [IntakeRows.build(BOX, f"msg_ok_{n}", order(n)) for n in range(5)]
    bad = IntakeRows.build(BOX, "msg_bad", order(99))
    bad = dataclasses.replace(bad, job={**bad.job, "service_id": "x" * 500})  # too long for its column
    results = await asyncio.gather(*(batches.store(rows) for rows in [*good, bad]), return_exceptions=True)
    assert all(not isinstance(r, BaseException) and not r.duplicate for r in results[:5])
    assert isinstance(results[5], Exception)
    assert await counts(engine) == {"events": 5, "jobs": 5, "steps": 25, "outbox": 5}
