"""The outbox relay: publishes committed wake-ups to the job queue.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` (many relays may run side by side)
and marked sent in the same statement, in a transaction that commits only after the
broker confirmed every message of the batch. The relay is woken right
after each commit that writes a row, and also polls, so nothing waits forever.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.broker.base import JobQueue, PublishError
from bridge.metrics import Metrics
from bridge.store import tables as t
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.store.types import utcnow
from bridge.waiting import wait_for_event

log = logging.getLogger("bridge.relay")


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        queue: JobQueue,
        metrics: Metrics,
        *,
        poll_s: float = 1.0,
        batch_size: int = 200,
        keep_sent_s: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._queue = queue
        self._metrics = metrics
        self._poll_s = poll_s
        self._batch_size = batch_size
        self._keep_sent = timedelta(seconds=keep_sent_s)
        self._wakeup = asyncio.Event()
        self._stopping = False
        unsent = (
            select(t.outbox.c.id)
            .where(t.outbox.c.sent_at.is_(None))
            .order_by(t.outbox.c.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        self._claim = (
            update(t.outbox)
            .where(t.outbox.c.id.in_(unsent.scalar_subquery()))
            .values(sent_at=bindparam("sent_at"))
            .returning(t.outbox.c.job_public_id, t.outbox.c.delay_s, t.outbox.c.created_at)
        )

    def wake(self) -> None:
        self._wakeup.set()

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows; the number published."""
        async with self._engine.begin() as conn:
            # Claim and mark in one statement. The mark is only committed once every
            # message of the batch is confirmed: on any failure the transaction rolls
            # back and the rows stay unsent (the locks keep other relays off them meanwhile).
            now = utcnow()
            rows = (await conn.execute(self._claim, {"sent_at": now})).all()
            if not rows:
                return 0
            # A delay counts from the commit that wrote the row: a row that waited in the
            # outbox (the broker was down) is published for what is left of it.
            delays = [max(0.0, row.delay_s - (now - row.created_at).total_seconds()) for row in rows]
            now_due = [row.job_public_id for row, delay in zip(rows, delays, strict=True) if delay <= 0]
            later = [(row.job_public_id, delay) for row, delay in zip(rows, delays, strict=True) if delay > 0]
            # Raises on the first failure, which rolls the claim back.
            await asyncio.gather(
                self._queue.publish_many(now_due), *(self._queue.publish(job_id, delay) for job_id, delay in later)
            )
        self._metrics.relay_published.inc(len(rows))
        return len(rows)

    async def drain(self) -> int:
        """Publish batches until one comes back short: what is committed later wakes the relay again."""
        total = 0
        while True:
            count = await self.relay_once()
            total += count
            if count < self._batch_size:
                return total

    async def prune(self) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(t.outbox).where(t.outbox.c.sent_at < utcnow() - self._keep_sent))

    async def run(self) -> None:
        """Relay until :meth:`stop`; then relay once more, so what is committed goes out."""
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await wait_for_event(self._wakeup, self._poll_s)
            self._wakeup.clear()
            await self.drain_quietly()
            if loop.time() - last_prune > 60:
                last_prune = loop.time()
                try:
                    await self.prune()
                except DATABASE_UNAVAILABLE:
                    pass
        await self.drain_quietly()

    async def drain_quietly(self) -> None:
        """Drain, logging (not raising) when the broker or the database is unavailable."""
        try:
            await self.drain()
        except PublishError as exc:
            log.warning("outbox relay: broker did not take the wake-ups, will retry: %s", exc)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("outbox relay: database unavailable, will retry: %s", exc.__class__.__name__)
        except Exception:  # the relay must outlive any one bad batch
            log.exception("outbox relay: unexpected error, will retry")

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
