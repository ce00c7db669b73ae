"""The outbox relay: every committed row published once, and marked sent only after the broker took it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.broker.base import PublishError
from bridge.broker.memory import InProcessQueue
from bridge.metrics import Metrics
from bridge.relay import OutboxRelay
from bridge.store import tables as t
from bridge.store.types import utcnow


class RecordingQueue(InProcessQueue):
    """The in-process queue, counting publishes; refuses everything while ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.published: Counter[str] = Counter()
        self.delays: dict[str, float] = {}
        self.shared: list[list[str]] = []  # the wake-ups handed over together, as publish_many had them
        self.refusing = False

    async def publish(self, job_id: str, delay_s: float = 0.0) -> None:
        await asyncio.sleep(0)  # let concurrent relays interleave
        if self.refusing:
            raise PublishError(f"refused {job_id}")
        self.published[job_id] += 1
        self.delays[job_id] = delay_s

    async def publish_many(self, job_ids: Sequence[str]) -> None:
        self.shared.append(list(job_ids))
        await super().publish_many(job_ids)


async def add_rows(engine: AsyncEngine, count: int) -> list[str]:
    ids = [f"job-{n}" for n in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            insert(t.outbox), [{"job_public_id": i, "delay_s": 0.0, "created_at": utcnow()} for i in ids]
        )
    return ids


async def unsent(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(t.outbox.c.id).where(t.outbox.c.sent_at.is_(None)))).all())


async def test_a_refused_batch_stays_unsent_and_goes_out_with_the_next_drain(engine: AsyncEngine) -> None:
    ids = await add_rows(engine, 7)
    queue = RecordingQueue()
    relay = OutboxRelay(engine, queue, Metrics(), batch_size=3)
    queue.refusing = True
    with pytest.raises(PublishError):
        await relay.drain()
    assert await unsent(engine) == 7
    queue.refusing = False
    assert await relay.drain() == 7
    assert await unsent(engine) == 0
    assert set(queue.published) == set(ids)


@pytest.mark.parametrize("db_url", ["pg"], indirect=True)
async def test_relays_side_by_side_publish_each_row_once(engine: AsyncEngine) -> None:
    ids = await add_rows(engine, 500)
    queue = RecordingQueue()
    relays = [OutboxRelay(engine, queue, Metrics(), batch_size=40) for _ in range(4)]
    counts = await asyncio.gather(*(relay.drain() for relay in relays))
    # A relay stops after a short batch, so one may stop early: whatever is left, drain once more.
    counts.append(await relays[0].drain())
    assert sum(counts) == 500
    assert queue.published == Counter(ids)
    assert await unsent(engine) == 0


async def test_a_wake_up_that_waited_in_the_outbox_is_published_for_what_is_left_of_its_delay(
    engine: AsyncEngine,
) -> None:
    # Committed 50 s ago for 60 s later (the broker was down meanwhile): due in 10 s, not in 60.
    # A row whose time has passed goes at once.
    committed = utcnow() - timedelta(seconds=50)
    async with engine.begin() as conn:
        await conn.execute(
            insert(t.outbox),
            [
                {"job_public_id": "waiting", "delay_s": 60.0, "created_at": committed},
                {"job_public_id": "overdue", "delay_s": 30.0, "created_at": committed},
            ],
        )
    queue = RecordingQueue()
    assert await OutboxRelay(engine, queue, Metrics()).drain() == 2
    assert 9.0 <= queue.delays["waiting"] <= 10.0
    assert queue.delays["overdue"] == 0.0


async def test_wake_ups_due_now_are_handed_to_the_queue_together(engine: AsyncEngine) -> None:
    # Together, so that the broker can carry them in a few messages instead of one each.
    ids = await add_rows(engine, 5)
    async with engine.begin() as conn:
        await conn.execute(insert(t.outbox), [{"job_public_id": "retry", "delay_s": 30.0, "created_at": utcnow()}])
    queue = RecordingQueue()
    assert await OutboxRelay(engine, queue, Metrics()).drain() == 6
    assert [sorted(batch) for batch in queue.shared] == [sorted(ids)]
    assert 29.0 <= queue.delays["retry"] <= 30.0
    assert queue.published == Counter([*ids, "retry"])
